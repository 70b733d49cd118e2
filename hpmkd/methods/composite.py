"""A method made of other methods (SMSKD's stages, the aggregate baseline).

The children keep their own feature requests, connectors and weights; the composite taps the
union of their features and owns what is shared between them (here: the CE term, weighted once
by ``lambda_c``, since each child's own CE weight is set to 0 when it is built).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from hpmkd.methods.base import DistillMethod, MethodSetup, build_method


def build_children(configs: Sequence[Mapping[str, Any]]) -> list[DistillMethod]:
    """Methods from their configs, with their own CE term switched off."""
    children = []
    for cfg in configs:
        params = dict(cfg)
        if _has_ce_weight(params["name"]):
            params["ce_weight"] = 0.0
        children.append(build_method(params))
    return children


def _has_ce_weight(name: str) -> bool:
    import inspect

    from hpmkd.methods.base import METHODS

    return name in METHODS and "ce_weight" in inspect.signature(METHODS[name]).parameters


class Composite(DistillMethod):
    """Shared plumbing: feature union, binding and setup delegated to the children."""

    def __init__(self, children: Sequence[DistillMethod], extra_student_features=()) -> None:
        super().__init__()
        self.children_methods = nn.ModuleList(children)
        self._extra_student_features = tuple(extra_student_features)

    def bind_features(self, student: nn.Module, teacher: nn.Module | None) -> None:
        for child in self.children_methods:
            child.bind_features(student, teacher)
        self.student_features = _union(
            [self._extra_student_features, *(c.student_features for c in self.children_methods)]
        )
        self.teacher_features = _union([c.teacher_features for c in self.children_methods])

    def setup(self, info: MethodSetup) -> None:
        for child in self.children_methods:
            child.setup(info)

    def on_epoch_start(self, student: nn.Module) -> None:
        for child in self.children_methods:
            child.epoch = self.epoch
            child.on_epoch_start(student)


def _union(groups: Sequence[Sequence[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))
