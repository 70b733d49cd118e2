"""Model families as parameter-count ladders: the members a chain link or a scan can pick from.

Progressive distillation (METHODS.md 2.2) and compression-ratio scans need "the member of the
student's family closest to a parameter budget". A family's members are generated around a
reference model (the student):

- ``mlp``: the reference's hidden widths times a multiplier (a geometric grid of 2^(k/8));
  depth, dropout and batch norm kept.
- ``resnet_cifar``: the depth ladder 6n+2 (8..110); for option-B models also width multipliers
  1-4 (``resnet{D}w{K}``); option-A models keep option A.
- ``wrn``: depth 6n+4 (10..40) x width 1..10.
- ``mobilenetv2``: width multipliers. Other families: their registered models.

Parameter counts come from building each member once per process (cached), with weight
initialisation switched off: only the shapes matter, and initialising a 100-model ladder of CNNs
would take a minute on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch import nn

from hpmkd.errors import UserError

from .registry import build_model, count_parameters, list_models, model_info


@dataclass(frozen=True)
class Member:
    """One model of a family: a model config (arch + params) and its parameter count."""

    arch: str
    params: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    # num_classes x input width (an MLP's flattened input, a conv net's channels): a linear
    # classifier's weights; a member below it cannot be a useful student
    floor: tuple[int, int] = (0, 0)

    @property
    def label(self) -> str:
        if self.arch.startswith("mlp"):
            return f"{self.arch}{list(self.params['hidden'])}"
        return self.arch

    def as_config(self) -> dict[str, Any]:
        return {"arch": self.arch, "params": dict(self.params)}


def _mlp_members(arch: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    merged = dict(model_info(arch).default_params) | dict(params)
    hidden = list(merged["hidden"])
    configs = []
    for k in range(-40, 41):
        widths = [max(1, round(w * 2 ** (k / 8))) for w in hidden]
        configs.append({"arch": arch, "params": merged | {"hidden": widths}})
    return configs


def _resnet_members(arch: str) -> list[dict[str, Any]]:
    depths = range(8, 111, 6)
    if arch.endswith("_a"):
        return [{"arch": f"resnet{d}_a", "params": {}} for d in depths]
    return [
        {"arch": f"resnet{d}" if k == 1 else f"resnet{d}w{k}", "params": {}}
        for d in depths
        for k in (1, 2, 3, 4)
    ]


def _candidate_configs(arch: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    family = model_info(arch).family
    if family == "mlp":
        return _mlp_members(arch, params)
    if family == "resnet_cifar" and "x4" not in arch:
        return _resnet_members(arch)
    if family == "wrn":
        return [
            {"arch": f"wrn_{d}_{w}", "params": {"dropout": params.get("dropout", 0.0)}}
            for d in range(10, 41, 6)
            for w in range(1, 11)
        ]
    if family == "mobilenetv2":
        multipliers = (0.25, 0.35, 0.5, 0.75, 1.0, 1.4, 2.0)
        return [{"arch": arch, "params": {"width_mult": m}} for m in multipliers]
    return [
        {"arch": name, "params": {}} for name in list_models() if model_info(name).family == family
    ]


def family_members(
    arch: str, params: Mapping[str, Any], *, num_classes: int, input_shape: Sequence[int]
) -> list[Member]:
    """Every member of ``arch``'s family, sorted by parameter count (duplicates dropped)."""
    members: dict[int, Member] = {}
    family = model_info(arch).family
    if family == "foreign":
        raise UserError(
            f"model '{arch}' is from outside hpmkd's zoo: its family cannot be scaled "
            "(student.target_ratio and +strategy=progressive need a zoo student)"
        )
    mlp = family == "mlp"
    floor = (num_classes, math.prod(input_shape) if mlp else int(input_shape[0]))
    for config in _candidate_configs(arch, params):
        count = _count(config["arch"], _frozen(config["params"]), num_classes, tuple(input_shape))
        members.setdefault(count, Member(config["arch"], config["params"], count, floor))
    return [members[count] for count in sorted(members)]


def _frozen(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


@functools.cache
def _count(arch: str, params: tuple, num_classes: int, input_shape: tuple[int, ...]) -> int:
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in params}
    with _initialisation_off():
        model = build_model(arch, num_classes=num_classes, input_shape=input_shape, **kwargs)
    return count_parameters(model)


@contextlib.contextmanager
def _initialisation_off() -> Iterator[None]:
    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(nn.init, name, keep))
        yield


def closest_member(
    members: Sequence[Member], budget: float, *, above: int = 0, below: float = math.inf
) -> Member | None:
    """The member whose parameter count is closest to ``budget`` on a log scale, among those
    strictly between ``above`` and ``below`` parameters; None when there is none."""
    allowed = [m for m in members if above < m.num_params < below]
    if not allowed:
        return None
    return min(allowed, key=lambda m: abs(math.log(m.num_params / budget)))


def member_at_ratio(
    members: Sequence[Member], teacher_params: int, ratio: float
) -> tuple[Member, float]:
    """The member closest to ``teacher_params / ratio`` parameters, and its actual ratio; a
    UserError when it has fewer parameters than num_classes x input width."""
    if not ratio > 0:
        raise UserError(f"student.target_ratio must be a positive number, got {ratio!r}")
    member = closest_member(members, teacher_params / ratio)
    assert member is not None
    classes, width = member.floor
    floor = classes * width
    if member.num_params < floor:
        raise UserError(
            f"student.target_ratio={ratio:g} gives {member.label} with {member.num_params:,} "
            f"parameters, fewer than num_classes x input width = {classes} x {width} = "
            f"{floor:,}; use a ratio of at most about {teacher_params / floor:.0f}"
        )
    return member, teacher_params / member.num_params
