"""FitNets hint learning (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

A trainable regressor maps one student feature (the guided layer) onto the teacher's hint layer
and the loss is their mean squared difference:
``ce_weight * CE + beta * mean((r(f_s) - f_t)^2)`` (+ ``kd_weight`` * KD when non-zero).

Decisions the paper leaves open, each a constructor argument:

- Training schedule: the paper trains the hint first, then the whole student with KD. hpmkd
  follows the CRD benchmark (RepDistiller), which adds the hint loss to CE in one stage with
  beta 100, and no hint pre-training.
- Hint layer (``student_feature``/``teacher_feature``): the CRD benchmark's ``hint_layer 2``
  is ``stage2`` of 3-stage CIFAR ResNets/WRNs, ``stage3`` of 5-stage VGGs and ``stage2`` of
  4-stage ResNet-50: the middle stage, index ``(n - 1) // 2``. The default ``middle_stage``
  takes that entry of the model's ``stages`` (``hidden1..K`` for MLPs), so it works for both
  families; any feature name or alias that resolves to one feature can be given instead. For
  WRNs the benchmark's ``feat[2]`` is the RAW stage-2 output (``stage2_pre``, before the next
  block's BN-ReLU), not ``stage2``; ``fidelity=repdistiller`` (the CRD presets) asks for
  ``feat[2]``, the benchmark's entry for every model that declares its list.
- Regressor (CRD's convolutional regressor), chosen from the dry-run shapes, followed by
  BatchNorm and (``regressor_relu``) a ReLU, since the hint is a post-ReLU feature:
  student map twice the teacher's size -> 3x3 conv, stride 2; half its size -> 4x4 transposed
  conv, stride 2; otherwise at least as large -> conv with kernel ``1 + s - t`` per dimension
  (1x1 for equal sizes). A student map smaller than the teacher's, but not exactly half, is
  rejected (UserError), as the CRD regressor does. 2-D student and teacher features use a
  linear layer; a 2-D feature meeting a map is treated as a 1x1 map. The conv/linear layer has
  no bias: CRD's has one, but a bias before BatchNorm is cancelled by it (same function class,
  ``t_C`` fewer parameters that would never receive a gradient).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import MethodSetup, register_method
from hpmkd.methods.feature_math import (
    FeatureMethod,
    as_map,
    batch_norm,
    feature_shape,
    pointwise,
    shape_error,
    spatial_size,
)

MIDDLE_STAGE = "middle_stage"


def _request(spec: str) -> str:
    """What the engine is asked to tap for a hint spec: all stages for ``middle_stage``."""
    return "stages" if spec == MIDDLE_STAGE else spec


def hint_regressor(
    student: tuple[str, tuple[int, ...]], teacher: tuple[str, tuple[int, ...]], relu: bool
) -> nn.Module:
    """CRD-style regressor from a student feature shape onto a teacher feature shape."""
    (_, s_shape), (_, t_shape) = student, teacher
    s_c, t_c = int(s_shape[1]), int(t_shape[1])
    spatial = len(s_shape) == 4 or len(t_shape) == 4
    if not spatial:
        layers: list[nn.Module] = [pointwise(s_c, t_c, spatial=False, bias=False)]
    else:
        (sh, sw), (th, tw) = spatial_size(s_shape), spatial_size(t_shape)
        if (sh, sw) == (2 * th, 2 * tw):
            conv: nn.Module = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1, bias=False)
        elif (2 * sh, 2 * sw) == (th, tw):
            conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1, bias=False)
        elif sh >= th and sw >= tw:
            conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + sh - th, 1 + sw - tw), bias=False)
        else:
            raise shape_error(
                "fitnet",
                student,
                teacher,
                "the student map is smaller than the teacher's and not exactly half its size, "
                "which the hint regressor cannot map; choose other hint layers",
            )
        layers = [conv]
    layers.append(batch_norm(t_c, spatial=spatial))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register_method
class FitNet(FeatureMethod):
    name = "fitnet"

    def __init__(
        self,
        student_feature: str = MIDDLE_STAGE,
        teacher_feature: str = MIDDLE_STAGE,
        regressor_relu: bool = True,
        beta: float = 100.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        for arg, value in (
            ("student_feature", student_feature),
            ("teacher_feature", teacher_feature),
        ):
            if not isinstance(value, str) or not value:
                raise UserError(f"method 'fitnet' needs {arg} = one feature name; got {value!r}")
        specs = (_request(student_feature), _request(teacher_feature))
        super().__init__(*specs, beta, ce_weight, kd_weight, temperature)
        self.specs = {"student": student_feature, "teacher": teacher_feature}
        self.regressor_relu = regressor_relu
        self.regressor: nn.Module | None = None

    def _pick(self, role: str, names: tuple[str, ...]) -> str:
        spec = self.specs[role]
        if spec == MIDDLE_STAGE:
            return names[(len(names) - 1) // 2]
        if len(names) != 1:
            raise UserError(
                f"method 'fitnet': {role}_feature '{spec}' names {len(names)} features "
                f"({', '.join(names)}); give exactly one"
            )
        return names[0]

    def setup(self, info: MethodSetup) -> None:
        s_name = self._pick("student", self.student_features)
        t_name = self._pick("teacher", self.teacher_features)
        s_shape = feature_shape(info.student_shapes, self.name, "student", s_name)
        t_shape = feature_shape(info.teacher_shapes, self.name, "teacher", t_name)
        self.pairs = [(s_name, t_name)]
        self.regressor = hint_regressor(
            (s_name, tuple(s_shape)), (t_name, tuple(t_shape)), self.regressor_relu
        )

    def pair_loss(self, index: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        assert self.regressor is not None
        if f_s.dim() == 2 and f_t.dim() == 2:
            return F.mse_loss(self.regressor(f_s).float(), f_t)
        return F.mse_loss(self.regressor(as_map(f_s)).float(), as_map(f_t))
