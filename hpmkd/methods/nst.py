"""Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like").

Each channel of a feature map is a sample of its layer's activation distribution: its
flattened spatial pattern, L2-normalised. The loss is the squared maximum mean discrepancy
between the student's and the teacher's channel sets under the polynomial kernel
``k(x, y) = (x . y + c)^d``:
``MMD^2 = mean k(t, t') + mean k(s, s') - 2 mean k(s, t)`` (means over all channel pairs and the
batch), summed over the paired stages:
``ce_weight * CE + beta * sum_stages MMD^2`` (+ ``kd_weight`` * KD when non-zero).

Decisions, each a constructor argument or stated here:

- Kernel: polynomial, ``degree`` d = 2 and ``coef0`` c = 0, the paper's best and the CRD
  benchmark's (RepDistiller) setting; beta = 50 as in that benchmark. The teacher-teacher term
  is constant; it is kept so that the value is the MMD itself (0 for identical features).
- Stages (default every stage, after its activation) are paired from the deepest backwards
  when the counts differ. The CRD benchmark takes its ``feat[1:-1]``: our ``stages`` for CIFAR
  ResNets, the RAW stage outputs (``stageK_pre``) for WRNs, groups 2-5 for VGG;
  ``fidelity=repdistiller`` (the CRD presets) asks for exactly that (``hpmkd.models.features``).
- Spatial sizes: maps of different size are average-pooled adaptively to the smaller height and
  width (the kernel compares spatial patterns, so the sizes must agree); channel counts may
  differ, MMD compares sets of any size.
- 2-D features are 1x1 maps: each normalised channel is its sign, with no gradient, so such pairs
  add no signal; setup logs a warning for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import MethodSetup, register_method
from hpmkd.methods.feature_math import FeatureMethod, fp32_bmm, match_spatial, warn_if_flat


def channel_distribution(f: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H*W), every channel's spatial pattern L2-normalised."""
    return F.normalize(f.flatten(2), dim=2)


def polynomial_mmd2(s: Tensor, t: Tensor, degree: float, coef0: float) -> Tensor:
    """Squared MMD between the channel sets ``s`` (N, Cs, D) and ``t`` (N, Ct, D), batch mean."""

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        return (fp32_bmm(a, b.transpose(1, 2)) + coef0).pow(degree).mean()

    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)


@register_method
class NST(FeatureMethod):
    name = "nst"

    def __init__(
        self,
        student_features: Sequence[str] | str = ("stages",),
        teacher_features: Sequence[str] | str = ("stages",),
        degree: float = 2.0,
        coef0: float = 0.0,
        beta: float = 50.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(
            student_features, teacher_features, beta, ce_weight, kd_weight, temperature
        )
        self.degree = degree
        self.coef0 = coef0

    def setup(self, info: MethodSetup) -> None:
        warn_if_flat(self.name, self.pair_stages(info), info, "normalised channels are constant")

    def pair_loss(self, index: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        m_s, m_t = match_spatial(f_s, f_t)
        s, t = channel_distribution(m_s), channel_distribution(m_t)
        return polynomial_mmd2(s, t, self.degree, self.coef0)
