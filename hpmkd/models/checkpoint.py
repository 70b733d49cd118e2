"""Load weights from checkpoint files (torch or safetensors, this project's or another's)
into models, strictly, with one-line errors."""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from hpmkd.errors import UserError

StateDict = dict[str, torch.Tensor]
_WRAPPER_PREFIXES = ("module.", "student.", "model.")


def load_state_dict_file(path: str | Path, prefix: str | None = None) -> StateDict:
    """Read a state dict from `path`: a torch file (loaded with ``weights_only=True`` on the
    CPU) or a ``.safetensors`` file.

    Accepts a raw state dict, ``{"state_dict": ...}`` (as written by training scripts and by
    Lightning). With `prefix` (``net.``), keys are those that carry it, without it; otherwise a
    ``module.`` (DataParallel), ``student.`` or ``model.`` prefix is stripped when every key
    carries it.
    """
    path = Path(path)
    return _select(_read(path), prefix, str(path))


def _read(path: Path) -> StateDict:
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    loaded = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not _is_state_dict(state):
        raise UserError(f"{path} is not a readable checkpoint (it holds no state dict of tensors)")
    return dict(state)


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise UserError(
            f"{path} is not a readable checkpoint (torch.load with weights_only=True failed: "
            f"{type(error).__name__})"
        ) from error


def _read_safetensors(path: Path) -> object:
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as error:
        raise UserError(
            f"{path}: reading safetensors needs the package safetensors (pip install safetensors, "
            'or hpmkd\'s extra: pip install "hpmkd[timm]")'
        ) from error
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # a corrupt header or a file of another format
        raise UserError(
            f"{path} is not a readable safetensors file ({type(error).__name__})"
        ) from error


def _select(state: StateDict, prefix: str | None, source: str) -> StateDict:
    if not prefix:
        return _strip_prefixes(state)
    selected = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        first = ", ".join(list(state)[:3])
        raise UserError(f"checkpoint {source} has no key starting with '{prefix}'; first: {first}")
    return selected


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    *,
    source: str,
    prefix: str | None = None,
) -> None:
    """Load weights into `model` strictly; UserError naming `source` and the first mismatches.

    BatchNorm ``num_batches_tracked`` counters absent from old checkpoints keep the model's
    values; every other key must be present with the same shape, and no key may be extra.
    Without `prefix`, a prefix common to every key (another project's ``net.``) is stripped when
    the model's keys do not carry it and the rest then match.
    """
    if isinstance(path_or_state_dict, Mapping):
        raw = dict(path_or_state_dict)
    else:
        raw = _read(Path(path_or_state_dict))
    expected = model.state_dict()
    if prefix:
        state = _select(raw, prefix, source)
    elif set(raw) <= set(expected):  # the model's own keys, whatever prefix they share
        state = raw
    else:
        state = _without_common_prefix(_strip_prefixes(raw), expected)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    problems = _mismatches(expected, state)
    if problems:
        label = getattr(model, "model_name", type(model).__name__)
        shown = "; ".join(problems[:3])
        more = f"; {len(problems) - 3} more keys differ" if len(problems) > 3 else ""
        raise UserError(
            f"checkpoint {source} does not match model {label}: first mismatching keys "
            f"{shown}{more} (a prefix to strip: checkpoint_prefix=...)"
        )
    model.load_state_dict(state, strict=True)


def _without_common_prefix(state: StateDict, expected: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` without the first dotted component of its keys when all share it and the
    model's keys do not (a wrapper's attribute: ``net.``, ``teacher.``)."""
    first = {key.partition(".")[0] for key in state}
    if len(first) != 1 or not all("." in key for key in state):
        return state
    prefix = f"{first.pop()}."
    if any(key.startswith(prefix) for key in expected):
        return state
    stripped = {key.removeprefix(prefix): value for key, value in state.items()}
    return stripped if set(stripped) <= set(expected) else state


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _strip_prefixes(state: StateDict) -> StateDict:
    stripped = bool(state)
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key.removeprefix(prefix): value for key, value in state.items()}
                stripped = True
    return state


def _mismatches(expected: Mapping[str, torch.Tensor], state: StateDict) -> list[str]:
    problems = []
    for key, value in expected.items():
        if key not in state:
            problems.append(f"'{key}' (missing from the checkpoint)")
        elif state[key].shape != value.shape:
            problems.append(
                f"'{key}' (checkpoint shape {tuple(state[key].shape)}, "
                f"model shape {tuple(value.shape)})"
            )
    problems += [f"'{key}' (unexpected: not in the model)" for key in state if key not in expected]
    return problems
