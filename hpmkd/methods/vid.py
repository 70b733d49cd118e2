"""Variational information distillation (Ahn et al. 2019, "Variational Information
Distillation for Knowledge Transfer").

For every paired stage, a Gaussian ``q(t | s) = N(t; mu(s), diag(sigma^2))`` with a regressor
``mu`` on the student feature and a learned per-channel variance
``sigma_c^2 = softplus(alpha_c) + eps`` lower-bounds the mutual information between teacher and
student features; the loss is its negative log-likelihood of the teacher feature,
``mean 0.5 * ((t - mu(s))^2 / sigma^2 + log sigma^2)`` (the constant ``0.5 log 2 pi`` left
out), summed over the stages:
``ce_weight * CE + beta * sum_stages NLL`` (+ ``kd_weight`` * KD when non-zero).

Decisions, each a constructor argument or stated here:

- Regressor as in the authors' code (used by the CRD benchmark, RepDistiller): 1x1 conv (no
  bias) -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv to the teacher's channels, the hidden width
  ``mid_channels`` defaulting to the teacher's channel count (null); for two 2-D features the
  same stack of linear layers.
- Variance init: ``alpha`` (the authors' ``log_scale``) ``= softplus^-1(init_pred_var - eps)``,
  so that every sigma^2 starts at ``init_pred_var`` = 5, with ``eps`` = 1e-5 (authors' code).
- Reduction: the mean over samples, channels and positions (benchmark), where the paper sums.
- beta = 1 (CRD benchmark). Stages (default every stage, after its activation) are paired from
  the deepest backwards when the counts differ. The CRD benchmark takes its ``feat[1:-1]``:
  our ``stages`` for CIFAR ResNets, the RAW stage outputs (``stageK_pre``) for WRNs, groups 2-5
  for VGG; ``fidelity=repdistiller`` (the CRD presets) asks for exactly that. Maps of
  different spatial size are average-pooled adaptively to the smaller height and width
  (benchmark); a 2-D feature meeting a map is a 1x1 map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import MethodSetup, register_method
from hpmkd.methods.feature_math import FeatureMethod, match_spatial, pointwise


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0), without overflow for large y."""
    return y + math.log(-math.expm1(-y))


def gaussian_nll(pred_mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Mean of ``0.5 * ((target - mean)^2 / var + log var)``; ``variance`` per channel (dim 1)."""
    var = variance.view(1, -1, *([1] * (target.dim() - 2)))
    return (0.5 * ((pred_mean - target).pow(2) / var + var.log())).mean()


class VariationalRegressor(nn.Module):
    """Predicts the teacher feature's mean from the student's; holds the per-channel variance."""

    def __init__(
        self, in_c: int, mid_c: int, out_c: int, spatial: bool, init_var: float, eps: float
    ) -> None:
        super().__init__()
        self.spatial = spatial
        self.mean = nn.Sequential(
            pointwise(in_c, mid_c, spatial=spatial, bias=False),
            nn.ReLU(),
            pointwise(mid_c, mid_c, spatial=spatial, bias=False),
            nn.ReLU(),
            pointwise(mid_c, out_c, spatial=spatial, bias=False),
        )
        self.alpha = nn.Parameter(torch.full((out_c,), inverse_softplus(init_var - eps)))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if self.spatial:
            f_s, f_t = match_spatial(f_s, f_t)
        return gaussian_nll(self.mean(f_s).float(), f_t, self.variance())


@register_method
class VID(FeatureMethod):
    name = "vid"

    def __init__(
        self,
        student_features: Sequence[str] | str = ("stages",),
        teacher_features: Sequence[str] | str = ("stages",),
        mid_channels: int | None = None,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
        beta: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(
            student_features, teacher_features, beta, ce_weight, kd_weight, temperature
        )
        if mid_channels is not None and (not isinstance(mid_channels, int) or mid_channels < 1):
            raise UserError(f"method 'vid' needs mid_channels = null or >= 1; got {mid_channels!r}")
        if not init_pred_var > eps > 0:
            raise UserError(
                f"method 'vid' needs init_pred_var > eps > 0; got {init_pred_var}, {eps}"
            )
        self.mid_channels = mid_channels
        self.init_pred_var = init_pred_var
        self.eps = eps
        self.regressors = nn.ModuleList()

    def setup(self, info: MethodSetup) -> None:
        self.regressors = nn.ModuleList()
        for s_name, t_name in self.pair_stages(info):
            s_shape, t_shape = info.student_shapes[s_name], info.teacher_shapes[t_name]
            t_c = int(t_shape[1])
            self.regressors.append(
                VariationalRegressor(
                    int(s_shape[1]),
                    self.mid_channels or t_c,
                    t_c,
                    spatial=len(s_shape) == 4 or len(t_shape) == 4,
                    init_var=self.init_pred_var,
                    eps=self.eps,
                )
            )

    def pair_loss(self, index: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        return self.regressors[index](f_s, f_t)
