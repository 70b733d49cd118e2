"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

The activation-based attention map of a feature ``f`` (N, C, H, W) is
``a = vec(mean_c |f_c|^p)``, L2-normalised per sample; the loss sums, over the paired stages,
the mean squared difference of the student's and the teacher's maps:
``ce_weight * CE + beta * sum_stages mean((a_s - a_t)^2)`` (+ ``kd_weight`` * KD when non-zero).

Decisions, each a constructor argument or stated here:

- ``p`` = 2 and beta = 1000 as in the CRD benchmark (RepDistiller); the paper writes the loss
  as beta/2 times the p-norm of the difference, the benchmark (followed here) takes the mean of
  the squared difference over samples and positions.
- Stages (``student_features``/``teacher_features``, default every stage, after its
  activation): paired from the deepest backwards when the counts differ. The CRD benchmark
  uses its ``feat[1:-1]``: our ``stages`` for CIFAR ResNets (and resnet8x4/32x4); for WRNs the
  RAW stage outputs (``stage1_pre``..``stage3_pre``, before the next block's BN-ReLU; on
  wrn_40_2 -> wrn_16_2 at random init, batch 64 in train mode, AT*1000 is 1.28-1.58 on these
  and 2.59-2.80 on the post-BN-ReLU ``stages``, seeds 0-2); for VGG
  groups 2-5 (``stage2``..``stage5``: it leaves out the first group). ``fidelity=repdistiller``
  (the ``experiment=crd_cifar100/*`` presets) asks for ``feat[1:-1]``, which names exactly
  these per model (``hpmkd.models.features``).
- Spatial sizes: maps of different size are average-pooled adaptively to the smaller height and
  width BEFORE the attention map is taken (as the benchmark does). Channel counts may differ:
  the map averages over channels.
- 2-D features are 1x1 maps; their attention map is a single normalised value (1), so such
  pairs contribute a constant 0. Setup logs a warning for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import MethodSetup, register_method
from hpmkd.methods.feature_math import FeatureMethod, match_spatial, warn_if_flat


def attention_map(f: Tensor, p: float) -> Tensor:
    """(N, C, H, W) -> (N, H*W): channel mean of |f|^p, L2-normalised per sample."""
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_method
class AT(FeatureMethod):
    name = "at"

    def __init__(
        self,
        student_features: Sequence[str] | str = ("stages",),
        teacher_features: Sequence[str] | str = ("stages",),
        p: float = 2.0,
        beta: float = 1000.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(
            student_features, teacher_features, beta, ce_weight, kd_weight, temperature
        )
        self.p = p

    def setup(self, info: MethodSetup) -> None:
        warn_if_flat(self.name, self.pair_stages(info), info, "attention maps are constant")

    def pair_loss(self, index: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        m_s, m_t = match_spatial(f_s, f_t)
        return (attention_map(m_s, self.p) - attention_map(m_t, self.p)).pow(2).mean()
