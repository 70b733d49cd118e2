"""Flow of solution procedure (Yim et al. 2017, "A Gift from Knowledge Distillation").

The FSP matrix of two consecutive features ``f1`` (N, C1, H, W) and ``f2`` (N, C2, H, W) is
``G[i, j] = sum_{h,w} f2[i, h, w] * f1[j, h, w] / (H * W)`` (C2 x C1). The loss is the mean
squared difference of the student's and the teacher's FSP matrices, summed over the consecutive
pairs. FSP has two stages (``init_epochs``, default 30): first the student is trained with the
FSP loss alone (``init_weight`` * FSP), then the main stage trains
``ce_weight * CE + beta * FSP`` (+ ``kd_weight`` * KD when non-zero).

Decisions, each a constructor argument or stated here:

- Main-stage weight ``beta`` = 0: the CRD benchmark (RepDistiller ``helper/loops.py``) sets the
  FSP loss to 0 after the initialisation stage, so its script's ``-b 50`` never weighs anything
  and the main stage is CE alone. A non-zero ``beta`` keeps FSP on in the main stage.
- Initialisation weight ``init_weight`` = 1: RepDistiller ``helper/pretrain.py`` sums the FSP
  losses unweighted; it optimises the student's feature modules (everything but the
  classifier), which is what ``init_parameters`` returns.
- Features (default ``[stem, stages]``, after their activations: the benchmark's ``feat[:-1]``
  for CIFAR ResNets; for WRNs the benchmark takes the RAW outputs, ``stem_pre`` and
  ``stageK_pre``). Models without a stem (VGG, MLPs) need ``[stages]`` (VGG: the benchmark's
  ``feat[:-1]``, all five groups). ``fidelity=repdistiller`` (the CRD presets) asks for
  ``feat[:-1]``, which names exactly these per model (``hpmkd.models.features``). Student and
  teacher features are paired from the deepest backwards when the counts differ, then FSP
  matrices are taken between consecutive features of each side.
- Channel counts must match at every paired feature (the matrices are compared entrywise); a
  mismatch raises UserError, since the benchmark runs FSP on same-width pairs only.
- Spatial sizes inside a consecutive pair are average-pooled adaptively to the smaller height and
  width; 2-D features are 1x1 maps (the matrix is then the outer product of the two vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import MethodSetup, ModelOutputs, register_method
from hpmkd.methods.feature_math import FeatureMethod, fp32_bmm, match_spatial, shape_error


def fsp_matrix(lower: Tensor, upper: Tensor) -> Tensor:
    """(N, C_upper, C_lower): spatial mean of the products of the two features' channels."""
    low, up = match_spatial(lower, upper)
    return fp32_bmm(up.flatten(2), low.flatten(2).transpose(1, 2)) / (low.shape[2] * low.shape[3])


@register_method
class FSP(FeatureMethod):
    name = "fsp"

    def __init__(
        self,
        student_features: Sequence[str] | str = ("stem", "stages"),
        teacher_features: Sequence[str] | str = ("stem", "stages"),
        init_epochs: int = 30,
        init_weight: float = 1.0,
        beta: float = 0.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(
            student_features, teacher_features, beta, ce_weight, kd_weight, temperature
        )
        if not isinstance(init_epochs, int) or isinstance(init_epochs, bool) or init_epochs < 0:
            raise UserError(f"method 'fsp' needs init_epochs >= 0; got {init_epochs!r}")
        self.init_epochs = init_epochs
        self.init_weight = init_weight

    def setup(self, info: MethodSetup) -> None:
        pairs = self.pair_stages(info)
        if len(pairs) < 2:
            raise UserError(
                f"method 'fsp' needs at least two paired features for an FSP matrix; got "
                f"{pairs} (student {list(self.student_features)}, "
                f"teacher {list(self.teacher_features)})"
            )
        for s_name, t_name in pairs:
            s_shape, t_shape = info.student_shapes[s_name], info.teacher_shapes[t_name]
            if s_shape[1] != t_shape[1]:
                raise shape_error(
                    self.name,
                    (s_name, s_shape),
                    (t_name, t_shape),
                    "FSP needs equal channel counts at every paired feature; use a teacher "
                    "and student of the same widths (as the CRD benchmark does)",
                )

    def feature_loss(self, features: list[tuple[Tensor, Tensor]]) -> Tensor:
        losses = [
            (fsp_matrix(s0, s1) - fsp_matrix(t0, t1)).pow(2).mean()
            for (s0, t0), (s1, t1) in zip(features, features[1:], strict=False)
        ]
        return torch.stack(losses).sum()

    def init_forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        features = self.paired_features(student, teacher)
        return {self.name: self.init_weight * self.feature_loss(features)}

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The student's parameters except its classifier (the module fed by ``pool``)."""
        point = getattr(student, "feature_points", {}).get("pool")
        skip: set[int] = set()
        if point is not None:
            skip = {id(p) for p in student.get_submodule(point[0]).parameters()}
        return [p for p in student.parameters() if id(p) not in skip]
