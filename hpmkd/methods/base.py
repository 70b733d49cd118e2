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


@dataclass(frozen=True)
class MethodSetup:
    """What a method may size its connectors and buffers from (seen in a dry forward pass).

    Shapes include the batch dimension; keys are the concrete feature names the method asked
    for (aliases such as ``stages`` already resolved, in order).
    """

    student_shapes: Mapping[str, torch.Size]
    teacher_shapes: Mapping[str, torch.Size]
    num_classes: int
    num_train: int


@dataclass
class ModelOutputs:
    """What a model produced for one batch: logits and the features a method asked for."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """Base class of all methods.

    Subclasses set ``needs_teacher`` and, for feature methods, fill ``student_features`` and
    ``teacher_features`` with feature names or aliases from the model zoo (``stages``,
    ``last_stage``, ``pool``...; see ``hpmkd.models.resolve_features``). Before training, the
    engine replaces them with the resolved concrete names and calls ``setup``. Methods with a
    temperature keep it in ``self.temperature`` so that schedules can change it between epochs;
    ``self.epoch`` is the current training epoch (0-based), set by the engine.

    Methods whose connectors need an initialisation stage first (AB, FT, FSP) set
    ``init_epochs`` and implement ``init_forward`` and ``init_parameters``; ``init_lr`` (None:
    the recipe's) is the learning rate of that stage.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    init_epochs: int = 0
    init_lr: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.student_features: tuple[str, ...] = ()
        self.teacher_features: tuple[str, ...] = ()
        self.epoch = 0

    def bind_features(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Replace feature aliases by the models' concrete names (called by the engine)."""
        from hpmkd.models import resolve_features

        self.student_features = resolve_features(student, self.student_features)
        if teacher is not None:
            self.teacher_features = resolve_features(teacher, self.teacher_features)

    def setup(self, info: MethodSetup) -> None:
        """Create connector modules and buffers from what the dry forward pass showed."""

    def on_epoch_start(self, student: nn.Module) -> None:
        """Called by the engine at the start of every training epoch, after ``epoch`` is set."""

    def step_metrics(self) -> dict[str, Tensor]:
        """Quantities of the last step to log (not losses: never summed into the loss)."""
        return {}

    def init_forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        """Loss terms of the initialisation stage (only for methods with ``init_epochs > 0``)."""
        raise NotImplementedError(f"method '{self.name}' has no initialisation stage")

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """Parameters trained in the initialisation stage."""
        raise NotImplementedError(f"method '{self.name}' has no initialisation stage")

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
