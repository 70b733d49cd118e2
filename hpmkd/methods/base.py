"""The contract every distillation method follows.

A method is an ``nn.Module`` that turns student and teacher outputs into a dict of named, already
weighted loss terms; the engine sums them. Trainable connectors (regressors, embedders) are
submodules of the method: they are optimised with the student, counted as extra parameters and
never part of the deployed student.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hpmkd.errors import UserError, unknown_name


@dataclass
class ModelOutputs:
    """What a model produced for one batch: logits and the features a method asked for."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """Base class of all methods.

    Subclasses set ``needs_teacher`` and, for feature methods, fill ``student_features`` and
    ``teacher_features`` with feature names from the model zoo (see ``FeatureTap``). Methods with
    a temperature keep it in ``self.temperature`` so that schedules can change it between epochs.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.student_features: tuple[str, ...] = ()
        self.teacher_features: tuple[str, ...] = ()

    def build_connectors(
        self, student: Mapping[str, torch.Size], teacher: Mapping[str, torch.Size]
    ) -> None:
        """Create connector modules from feature shapes seen in a dry forward pass."""

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


METHODS: dict[str, type[DistillMethod]] = {}


def register_method(cls: type[DistillMethod]) -> type[DistillMethod]:
    METHODS[cls.name] = cls
    return cls


def build_method(cfg: Mapping[str, Any]) -> DistillMethod:
    """Instantiate a method from its config node (``name`` plus the method's keyword arguments)."""
    params = dict(cfg)
    name = params.pop("name")
    if name not in METHODS:
        raise unknown_name("method", name, list(METHODS))
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise UserError(f"bad parameters for method '{name}': {err}") from None
