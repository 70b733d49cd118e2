"""Load weights from checkpoint files into zoo models, strictly, with one-line errors."""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from hpmkd.errors import UserError

StateDict = dict[str, torch.Tensor]
_WRAPPER_PREFIXES = ("module.", "student.", "model.")


def load_state_dict_file(path: str | Path) -> StateDict:
    """Read a state dict from `path` (loaded with ``weights_only=True`` on the CPU).

    Accepts a raw state dict, ``{"state_dict": ...}`` (as written by training scripts and by
    Lightning). A ``module.`` (DataParallel), ``student.`` or ``model.`` prefix is stripped when
    every key carries it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise UserError(
            f"{path} is not a readable checkpoint (torch.load with weights_only=True failed: "
            f"{type(error).__name__})"
        ) from error
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not _is_state_dict(state):
        raise UserError(f"{path} is not a readable checkpoint (it holds no state dict of tensors)")
    return _strip_prefixes(dict(state))


def load_weights(
    model: nn.Module, path_or_state_dict: str | Path | Mapping[str, torch.Tensor], *, source: str
) -> None:
    """Load weights into `model` strictly; UserError naming `source` and the first mismatch.

    BatchNorm ``num_batches_tracked`` counters absent from old checkpoints keep the model's
    values; every other key must be present with the same shape, and no key may be extra.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = _strip_prefixes(dict(path_or_state_dict))
    else:
        state = load_state_dict_file(path_or_state_dict)
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    problems = _mismatches(expected, state)
    if problems:
        label = getattr(model, "model_name", type(model).__name__)
        more = f"; {len(problems) - 1} more keys differ" if len(problems) > 1 else ""
        raise UserError(
            f"checkpoint {source} does not match model {label}: "
            f"first mismatching key {problems[0]}{more}"
        )
    model.load_state_dict(state, strict=True)


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
