"""Read intermediate features of a model through persistent forward hooks.

Every zoo model has ``feature_points: dict[str, tuple[str, str]]`` mapping a feature name to
``(module_path, "input" | "output" | "tokens")``: the feature is the first input or the output
of the submodule ``model.get_submodule(module_path)`` (``tokens``: its ``[B, N, C]`` output as a
``[B, C, h, w]`` map, ``tokens_as_map``). Standard names:

- CNNs: ``stem``, ``stage1``..``stageN`` (after the activation), ``stageK_pre`` (the same point
  before the last activation of the stage), ``pool`` (the flat vector fed to the classifier).
- MLPs: ``hidden1``..``hiddenK``, ``hiddenK_pre``, ``pool``.

Family docstrings state the exceptions (VGG has no stem, MobileNetV2 stages are linear).

The CRD benchmark (RepDistiller) hands its losses a list ``feat`` of a model's features (and
``preact``, the same list with pre-activation stages, for AB) and picks entries by Python index:
``feat[1:-1]``, ``feat[-2]``, ``feat[2]``, ``feat[:-1]``. Models that declare these lists
(``benchmark_features``: CIFAR ResNets, WRNs, VGG) accept exactly those specs as aliases, so a
config can name the benchmark's features for any of them.
"""

import math
import re
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hpmkd.errors import UserError


class FeatureTap:
    """Persistent forward hooks that keep the latest value of the requested features.

    After each ``model(x)``, ``tap.features`` maps every requested name to its tensor from that
    forward pass (not detached, so gradients flow). ``remove()`` or leaving a ``with`` block
    removes the hooks. Outputs of the model are not changed.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        points: dict[str, tuple[str, str]] = getattr(model, "feature_points", {})
        for name in names:
            if name not in points:
                label = getattr(model, "model_name", type(model).__name__)
                valid = ", ".join(sorted(points)) or "(none)"
                raise UserError(f"model '{label}' has no feature '{name}'; valid: {valid}")
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return
        self._handles.append(model.register_forward_pre_hook(self._clear))
        by_module: dict[str, list[tuple[str, str]]] = {}
        for name in wanted:
            path, where = points[name]
            by_module.setdefault(path, []).append((name, where))
        for path, entries in by_module.items():
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._recorder(entries)))

    def _clear(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.features.clear()

    def _recorder(self, entries: list[tuple[str, str]]) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            for name, where in entries:
                value = args[0] if where == "input" else output
                # a foreign module may return a tuple (Hugging Face blocks): its first tensor
                value = value[0] if isinstance(value, tuple) else value
                self.features[name] = tokens_as_map(value) if where == "tokens" else value

        return record

    def remove(self) -> None:
        """Remove all hooks; calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def tokens_as_map(tokens: torch.Tensor) -> torch.Tensor:
    """A transformer's tokens ``[B, N, C]`` as a feature map ``[B, C, h, w]``: the patch tokens
    (the last ``h * w``, square) in their grid, leading class and register tokens left out, so
    that map methods (FitNet, AT) pair a vision transformer with a conv net."""
    batch, count, channels = tokens.shape
    side = math.isqrt(count)
    while side > 0 and count - side * side > 8:  # at most a few leading special tokens
        side -= 1
    if side == 0 or count - side * side > 8:
        raise UserError(
            f"tokens {tuple(tokens.shape)} hold no square grid of patches to use as a map"
        )
    grid = tokens[:, count - side * side :, :]
    return grid.transpose(1, 2).reshape(batch, channels, side, side)


_STAGE = re.compile(r"(stage|hidden)(\d+)")
_STAGE_PRE = re.compile(r"(stage|hidden)(\d+)_pre")
_BENCHMARK = re.compile(r"(feat|preact)\[(-?\d*)(:?)(-?\d*)\]")

BenchmarkFeatures = dict[str, tuple[str, ...]]


def benchmark_alias(model: nn.Module, spec: str) -> list[str] | None:
    """The names a ``feat[...]``/``preact[...]`` spec picks from the model's benchmark lists
    (None when ``spec`` is no such spec); an index as in Python, a slice with step 1."""
    match = _BENCHMARK.fullmatch(spec)
    if match is None:
        return None
    label = getattr(model, "model_name", type(model).__name__)
    lists: BenchmarkFeatures | None = getattr(model, "benchmark_features", None)
    if not lists:
        raise UserError(
            f"model '{label}' declares no benchmark feature list for '{spec}' "
            "(CIFAR ResNets, WRNs and VGG do)"
        )
    names = lists[match.group(1)]
    start, colon, stop = match.group(2), match.group(3), match.group(4)
    if colon:
        return list(names[slice(int(start) if start else None, int(stop) if stop else None)])
    if not start or stop or not -len(names) <= int(start) < len(names):
        raise UserError(f"model '{label}': '{spec}' is not an entry of its {len(names)} features")
    return [names[int(start)]]


def resolve_features(model: nn.Module, specs: Sequence[str]) -> tuple[str, ...]:
    """Expand feature aliases into the model's concrete feature names, in order.

    Aliases: ``stages`` (every stage, or hidden layer for MLPs, after its activation, shallow to
    deep), ``stages_pre`` (the same before the activation), ``last_stage``, ``last_stage_pre``.
    ``feat[...]``/``preact[...]`` index the model's benchmark lists (module docstring).
    Any other name must be one of the model's ``feature_points`` (checked by ``FeatureTap``).
    """
    points: dict[str, tuple[str, str]] = getattr(model, "feature_points", {})

    def ordered(pattern: re.Pattern[str]) -> list[str]:
        found = [(int(m.group(2)), n) for n in points if (m := pattern.fullmatch(n))]
        return [n for _, n in sorted(found)]

    aliases = {
        "stages": ordered(_STAGE),
        "stages_pre": ordered(_STAGE_PRE),
        "last_stage": ordered(_STAGE)[-1:],
        "last_stage_pre": ordered(_STAGE_PRE)[-1:],
    }
    resolved: list[str] = []
    for spec in specs:
        expansion = benchmark_alias(model, spec)
        if expansion is None:
            expansion = aliases.get(spec, [spec])
        if not expansion:
            label = getattr(model, "model_name", type(model).__name__)
            raise UserError(f"model '{label}' has no features for '{spec}'")
        resolved.extend(expansion)
    return tuple(resolved)
