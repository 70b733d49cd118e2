"""What a run obtained: each model's record, and a strategy's result (read by results.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hpmkd.engine.fit import FitResult
from hpmkd.models import count_parameters


@dataclass
class ModelRecord:
    """A trained model as results.json reports it."""

    role: str
    arch: str
    params: int
    val_acc: float | None = None
    test_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] | None = None  # the FitResult of its training, when hpmkd trained it


@dataclass
class StrategyResult:
    student: ModelRecord
    fit: FitResult
    extra_params: int = 0
    teacher: ModelRecord | None = None
    method: dict[str, Any] | None = None
    intermediates: list[ModelRecord] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # strategy-specific (e.g. SMSKD stages)


def model_record(role: str, arch: str, model: nn.Module, **kwargs: Any) -> ModelRecord:
    return ModelRecord(role=role, arch=arch, params=count_parameters(model), **kwargs)
