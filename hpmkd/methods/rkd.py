"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019; METHODS.md 1.2).

On flattened features (``(N, D)``, the pooled vector by default, as in the CRD benchmark):
- distance loss: pairwise Euclidean distances, each side divided by its own mean over the
  distinct pairs, compared with the Huber (smooth L1, delta 1) loss;
- angle loss: for every vertex ``a`` the cosines between the unit vectors ``e_b - e_a`` and
  ``e_c - e_a``, compared with the Huber loss.
Both are invariant to translation and rotation of each embedding and to its scale, and only
batch relations are compared, so any widths work.
``L = ce_weight * CE + beta * (distance_weight * L_D + angle_weight * L_A)`` with the paper's
25 / 50 and the benchmark's beta 1. Decisions the paper leaves open, fixed as in the reference
code (so that the published weights keep their meaning): the Huber losses are averaged over all
``N^2`` and ``N^3`` entries including the degenerate ones (zero on both sides); a batch with no
two distinct samples gives 0. Several features are paired from the deepest backwards and summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import register_method
from hpmkd.methods.relation_math import FeaturePairMethod, flatten_batch, pairwise_distances


def mean_normalized_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    d = pairwise_distances(e)
    positive = (d > 0).sum().clamp_min(1)
    return d / (d.sum() / positive).clamp_min(eps)


def vertex_angles(e: Tensor) -> Tensor:
    """``(N, N, N)``: entry ``[a, b, c]`` is the cosine of the angle at ``e_a`` between ``e_b``
    and ``e_c`` (0 where ``b`` or ``c`` coincides with ``a``)."""
    directions = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return directions @ directions.transpose(1, 2)


@register_method
class RKD(FeaturePairMethod):
    name = "rkd"

    def __init__(
        self,
        student_features: Sequence[str] = ("pool",),
        teacher_features: Sequence[str] = ("pool",),
        beta: float = 1.0,
        ce_weight: float = 1.0,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ) -> None:
        super().__init__(student_features, teacher_features, beta, ce_weight)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def pair_loss(self, k: int, f_s: Tensor, f_t: Tensor) -> dict[str, Tensor]:
        e_s, e_t = flatten_batch(f_s), flatten_batch(f_t)
        terms = {}
        if self.distance_weight:
            distance = F.smooth_l1_loss(
                mean_normalized_distances(e_s), mean_normalized_distances(e_t)
            )
            terms["rkd_distance"] = self.distance_weight * distance
        if self.angle_weight:
            angle = F.smooth_l1_loss(vertex_angles(e_s), vertex_angles(e_t))
            terms["rkd_angle"] = self.angle_weight * angle
        return terms
