"""DIST: distillation from a stronger teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

Exact matching (KL) is replaced by relation matching of the tempered probabilities
``Y = softmax(z / tau)`` ``(B, C)``:
- inter-class relation: ``1 - mean_i pearson(Y_s[i, :], Y_t[i, :])`` (each sample's ranking of
  the classes);
- intra-class relation: ``1 - mean_c pearson(Y_s[:, c], Y_t[:, c])`` (each class's ranking of
  the samples of the batch).
``L = ce_weight * CE + tau^2 * (beta * L_inter + gamma * L_intra)`` (the official code multiplies
both relations by ``tau^2``). Pearson correlation is invariant to a positive affine map of either
side, so e.g. a student that mixes the teacher's probabilities with the uniform distribution
scores 0.

Defaults are the official CIFAR-100 setting (hunto/DIST_KD, ``dist_cifar.yaml``:
``kd: dist_t4``, i.e. beta = gamma = 1 and tau 4, with ``kd_loss_weight: 2`` and
``ori_loss_weight: 1``), folded here into beta = gamma = 2, tau 4, CE 1. The paper's ImageNet
setting is beta = gamma = 1, tau 1. Correlations use the reference's ``eps`` 1e-8 in the
denominator, so a constant row or column (e.g. a batch of one for the intra-class term) counts
as uncorrelated instead of NaN.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import DistillMethod, ModelOutputs, register_method
from hpmkd.methods.functional import cross_entropy
from hpmkd.methods.relation_math import pearson_correlation, require_same_shape


@register_method
class DIST(DistillMethod):
    name = "dist"

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 2.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.temperature = temperature
        self.ce_weight = ce_weight

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        assert teacher is not None
        require_same_shape(self.name, "logits", student.logits, teacher.logits)
        t = self.temperature
        y_s = F.softmax(student.logits.float() / t, dim=1)
        y_t = F.softmax(teacher.logits.float() / t, dim=1)
        inter = 1.0 - pearson_correlation(y_s, y_t).mean()
        intra = 1.0 - pearson_correlation(y_s.t(), y_t.t()).mean()
        return {
            "ce": self.ce_weight * cross_entropy(student.logits, labels),
            "dist_inter": self.beta * t**2 * inter,
            "dist_intra": self.gamma * t**2 * intra,
        }
