"""Cross-entropy on the labels alone: plain training, no teacher."""

from __future__ import annotations

from torch import Tensor

from hpmkd.methods.base import DistillMethod, ModelOutputs, register_method
from hpmkd.methods.functional import cross_entropy


@register_method
class CrossEntropy(DistillMethod):
    name = "ce"
    needs_teacher = False

    def __init__(self, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.ce_weight = ce_weight

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        ce = cross_entropy(student.logits, labels)
        return {"ce": ce if self.ce_weight == 1.0 else self.ce_weight * ce}
