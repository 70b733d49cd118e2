"""Feature points of a foreign model, found by one dry forward with hooks on every module.

- Conv nets: the last module to finish at each spatial resolution, shallow to deep (a smaller
  resolution that a later module leaves again, such as a squeeze-excitation's 1x1, is no stage;
  global pools are none either). The first resolution is the ``stem`` when there are more.
- Token models (outputs ``[B, N, C]``, ViTs): the blocks of the longest module list whose
  children all give tokens of one shape, each a stage, its patch tokens read as a ``[B, C, h, w]``
  map (features.tokens_as_map; a tuple output gives its first entry).
- timm models with ``feature_info``: its modules, as stages.
- ``pool``: the input of the first ``nn.Linear`` that runs after every feature map or token
  tensor (the features the head reads).

The dry forward also checks that the model gives one logit per class of the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpmkd.errors import UserError

Points = dict[str, tuple[str, str]]
# the first of timm's feature_info modules is the stem when it is one of these
_STEM_PREFIXES = ("act", "stem", "conv", "bn")


@dataclass
class _Call:
    path: str
    module: nn.Module
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _shape(value: Any) -> tuple[int, ...] | None:
    tensor = _first_tensor(value)
    return tuple(tensor.shape) if tensor is not None else None


def dry_forward(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[_Call], Any]:
    """Every module's call in finishing order, and the model's output, for a batch of two zeros."""
    calls: list[_Call] = []
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(mod: nn.Module, args: tuple, output: Any, path: str = path) -> None:
            calls.append(_Call(path, mod, _shape(args[0]) if args else None, _shape(output)))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls, output


def _spatial_stages(calls: list[_Call]) -> list[str]:
    # groups of (resolution, [(depth, path)]); a group deeper than a later call's resolution
    # was left again (a squeeze-excitation's 1x1) and is dropped
    stack: list[tuple[tuple[int, int], list[tuple[int, str]]]] = []
    for call in calls:
        shape = call.out_shape
        if shape is None or len(shape) != 4:
            continue
        resolution = (shape[2], shape[3])
        if resolution == (1, 1) and "Pool" in type(call.module).__name__:
            continue  # a global pool: the head's input, not a stage
        while stack and stack[-1][0][0] * stack[-1][0][1] < resolution[0] * resolution[1]:
            stack.pop()
        if not stack or stack[-1][0] != resolution:
            stack.append((resolution, []))
        stack[-1][1].append((call.path.count("."), call.path))
    # per resolution the shallowest module to finish last: a stage container, not a layer in it
    return [_last_shallowest(entries) for _, entries in stack]


def _last_shallowest(entries: list[tuple[int, str]]) -> str:
    depth = min(d for d, _ in entries)
    return [path for d, path in entries if d == depth][-1]


def _token_stages(model: nn.Module, calls: list[_Call]) -> list[str]:
    shapes = {call.path: call.out_shape for call in calls}
    best: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        if not all(any(True for _ in child.parameters()) for child in module.children()):
            continue  # blocks hold weights; an MLP's activation and dropout do not
        children = [f"{path}.{name}" if path else name for name, _ in module.named_children()]
        found = {shapes.get(child) for child in children}
        if len(found) == 1 and (shape := found.pop()) is not None and len(shape) == 3:
            if len(children) > len(best):
                best = children
    return best


def _pool(calls: list[_Call]) -> tuple[str, str] | None:
    last_map = max(
        (i for i, c in enumerate(calls) if c.out_shape is not None and len(c.out_shape) >= 3),
        default=-1,
    )
    for call in calls[last_map + 1 :]:
        if isinstance(call.module, nn.Linear) and call.in_shape and len(call.in_shape) == 2:
            return (call.path, "input")
    return None


def logits_of(output: Any) -> torch.Tensor | None:
    """The logits tensor of a model's output (a tensor, or an object with ``.logits``)."""
    logits = getattr(output, "logits", output)
    return logits if isinstance(logits, torch.Tensor) else None


def check_head(arch: str, output: Any, num_classes: int) -> None:
    """UserError when the model does not give ``[B, num_classes]`` logits."""
    logits = logits_of(output)
    if logits is None or logits.dim() != 2:
        shape = tuple(logits.shape) if logits is not None else type(output).__name__
        raise UserError(f"model '{arch}' must return logits [batch, classes]; it returns {shape}")
    if logits.shape[1] != num_classes:
        raise UserError(
            f"model '{arch}' gives {logits.shape[1]} logits per sample but the data has "
            f"{num_classes} classes (data.num_classes); give the model num_classes={num_classes} "
            "or a head of that width"
        )


def replace_head(model: nn.Module, arch: str, input_shape: Sequence[int], width: int) -> bool:
    """Swap the model's last ``nn.Linear`` giving its logits for a fresh one of ``width``
    outputs (a pretrained model's head for the data's classes); False when there is none."""
    calls, output = dry_forward(model, input_shape)
    logits = logits_of(output)
    if logits is None:
        return False
    for call in reversed(calls):
        if isinstance(call.module, nn.Linear) and call.out_shape == tuple(logits.shape):
            parent, _, name = call.path.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, name, nn.Linear(call.module.in_features, width))
            return True
    return False


def _override(model: nn.Module, arch: str, name: str, spec: str) -> tuple[str, str]:
    path, _, where = str(spec).partition(":")
    where = where or "output"
    if where not in ("input", "output"):
        raise UserError(
            f"model '{arch}' feature '{name}': '{spec}' is not <module> or <module>:input"
        )
    try:
        model.get_submodule(path)
    except AttributeError as error:
        top = ", ".join(n for n, _ in model.named_children())
        raise UserError(
            f"model '{arch}' has no module '{path}' (feature '{name}'); top-level modules: {top}"
        ) from error
    return (path, where)


def discover_feature_points(
    model: nn.Module,
    arch: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    overrides: Mapping[str, str],
) -> Points:
    """Feature points of ``model`` (module docstring), ``overrides`` replacing found ones."""
    calls, output = dry_forward(model, input_shape)
    check_head(arch, output, num_classes)
    points: Points = {}
    info = getattr(model, "feature_info", None)
    modules = _timm_modules(info)
    if modules:
        stages = modules
        if len(stages) > 2 and stages[0].startswith(_STEM_PREFIXES):
            points["stem"] = (stages.pop(0), "output")
    else:
        stages = _spatial_stages(calls)
        if len(stages) > 1:
            points["stem"] = (stages.pop(0), "output")
        tokens = _token_stages(model, calls)
        if tokens and len(tokens) >= len(stages):
            stages = tokens
    shapes = {call.path: call.out_shape for call in calls}
    for index, path in enumerate(stages, start=1):
        shape = shapes.get(path)
        points[f"stage{index}"] = (path, "tokens" if shape and len(shape) == 3 else "output")
    pool = _pool(calls)
    if pool is not None:
        points["pool"] = pool
    if any(name.startswith("stage") for name in overrides):
        points = {k: v for k, v in points.items() if not k.startswith("stage")}
    for name, spec in overrides.items():
        points[name] = _override(model, arch, name, spec)
    return points


def _timm_modules(info: Any) -> list[str]:
    try:
        return [str(entry["module"]) for entry in info]  # timm's FeatureInfo or a list of dicts
    except (TypeError, KeyError):
        return []
