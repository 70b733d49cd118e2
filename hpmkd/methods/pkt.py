"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018; METHODS.md 1.2).

Each model's features (flattened to ``(N, D)``) define a cosine-similarity kernel
``K_ij = (cos(f_i, f_j) + 1) / 2`` in ``[0, 1]``; normalising each row to sum to one gives the
conditional probabilities ``p_{j|i}`` (teacher) and ``q_{j|i}`` (student), and the loss is the
divergence ``sum_ij p log((p + eps) / (q + eps))``. Cosine kernels make it invariant to the norm
of every sample's feature, and only ``N x N`` matrices are compared, so any widths work.

Decisions the paper leaves open, each an argument:
- ``include_self`` (default true): the reference code keeps the ``j = i`` entries in every row;
  the paper's definition sums over ``k != j`` (false drops the diagonal from both kernels).
- reduction: like the reference code the divergence is averaged over all ``N^2`` entries (not
  summed per row); the benchmark's ``beta`` 30000 (CRD repository) is calibrated on that.
Weighted ``ce_weight * CE + beta * L_PKT`` on the pooled feature; several features are paired
from the deepest backwards and summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hpmkd.methods.base import register_method
from hpmkd.methods.relation_math import (
    FeaturePairMethod,
    cosine_similarity_matrix,
    flatten_batch,
    row_normalize,
)

EPS = 1e-7


@register_method
class PKT(FeaturePairMethod):
    name = "pkt"

    def __init__(
        self,
        student_features: Sequence[str] = ("pool",),
        teacher_features: Sequence[str] = ("pool",),
        beta: float = 30000.0,
        ce_weight: float = 1.0,
        include_self: bool = True,
    ) -> None:
        super().__init__(student_features, teacher_features, beta, ce_weight)
        self.include_self = include_self

    def conditional_probabilities(self, f: Tensor) -> Tensor:
        kernel = (cosine_similarity_matrix(flatten_batch(f), eps=EPS) + 1.0) / 2.0
        if not self.include_self:
            kernel = kernel * (1.0 - torch.eye(len(kernel), device=f.device))
        return row_normalize(kernel, p=1)

    def pair_loss(self, k: int, f_s: Tensor, f_t: Tensor) -> dict[str, Tensor]:
        p = self.conditional_probabilities(f_t)
        q = self.conditional_probabilities(f_s)
        return {"pkt": (p * torch.log((p + EPS) / (q + EPS))).mean()}
