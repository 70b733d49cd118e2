"""Direct loss aggregation: all listed methods' losses summed in one stage (SMSKD's baseline)."""

from __future__ import annotations

from torch import Tensor

from hpmkd.methods.base import ModelOutputs
from hpmkd.methods.composite import Composite
from hpmkd.methods.functional import cross_entropy


class Aggregate(Composite):
    name = "aggregate"

    def __init__(self, children, lambda_c: float = 1.0) -> None:
        super().__init__(children)
        self.lambda_c = lambda_c

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        terms = {"ce": self.lambda_c * cross_entropy(student.logits, labels)}
        for child in self.children_methods:
            for term, value in child(student, teacher, labels, index).items():
                terms[f"{child.name}/{term}"] = value
        return terms
