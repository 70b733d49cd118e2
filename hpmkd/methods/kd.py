"""Hinton et al. 2015 knowledge distillation (METHODS.md 1.1)."""

from __future__ import annotations

from torch import Tensor

from hpmkd.methods.base import DistillMethod, ModelOutputs, register_method
from hpmkd.methods.functional import cross_entropy, tempered_kl


@register_method
class KD(DistillMethod):
    name = "kd"

    def __init__(
        self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        assert teacher is not None
        return {
            "ce": self.ce_weight * cross_entropy(student.logits, labels),
            "kd": self.kd_weight * tempered_kl(student.logits, teacher.logits, self.temperature),
        }
