"""Activation boundaries (Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons", AAAI).

The student learns where the teacher's neurons switch on and off. A trainable connector ``r``
(1x1 convolution + BatchNorm, to the teacher's channel count) maps each student pre-activation
feature ``s`` onto the teacher's pre-activation ``t``; the paper's alternative to the hinge loss
with margin ``mu`` is, per neuron,
``relu(mu - r(s))^2`` where the teacher neuron is active (``t > 0``) and
``relu(mu + r(s))^2`` where it is not, summed over neurons.

Loss per paired stage ``i`` of ``n`` (shallow -> deep), as the CRD benchmark (RepDistiller)
scales it: ``stage_decay^(n-1-i) * sum / batch_size * loss_scale`` (the deepest stage weighs 1,
each shallower one half as much; ``loss_scale`` 3/1000), summed over stages.

Decisions, each a constructor argument or stated here:

- Schedule (CRD benchmark): an initialisation stage of ``init_epochs`` (30) trains the student
  and the connectors with the AB loss alone (unweighted, as RepDistiller's init stage). In the
  main stage RepDistiller's training loop sets the AB term to 0 (the script's ``-b 1``
  multiplies zero), so the main stage is ``ce_weight * CE`` only: ``main_stage_distill`` false.
  Set it true to keep ``beta * AB`` (``beta`` 1, the script's value) in the main stage too.
- Features (``student_features``/``teacher_features``, default ``stages_pre``: every stage
  before its last activation; the benchmark's for ResNets only, see below). Different stage
  counts are paired from the deepest backwards; extra shallow stages are left out.
- Features in the CRD benchmark: RepDistiller runs its models with ``preact=True`` and takes
  ``feat[1:-1]``: the pre-ReLU stage outputs of ResNets (our ``stages_pre``); for WRNs the
  stage outputs after the next block's BatchNorm, before its ReLU (our ``stageK_bn``, which no
  hpmkd alias names by default); for VGG groups 2-5 only (``stage2_pre``..``stage5_pre``), so
  its stage weights are those of n = 4. ``fidelity=repdistiller`` (the CRD presets) asks for
  ``preact[1:-1]``, which names exactly these (``hpmkd.models.features``).
- Connector (``connector``): ``conv_bn`` (default) is always 1x1 conv (no bias) + BatchNorm as
  in the paper's code, also when the shapes already agree; ``identity_if_same`` is
  RepDistiller's: the identity where the student's channels and size equal the teacher's (all
  five CRD pairs), else 1x1 conv + BatchNorm (the CRD presets). A linear layer + BatchNorm1d
  for 2-D (MLP) pairs. Maps of different spatial size are average-pooled adaptively to the
  smaller height and width after the connector (RepDistiller instead uses a strided/transposed
  conv regressor); the teacher's sign pattern is read from its (pooled) map.
- 2-D features are 1x1 maps; features that are neither (N, C) nor (N, C, H, W) are rejected
  with a UserError at setup.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import MethodSetup, ModelOutputs, register_method
from hpmkd.methods.feature_math import FeatureMethod, as_map, batch_norm, match_spatial, pointwise

CONNECTORS = ("conv_bn", "identity_if_same")


def boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Alternative-to-hinge loss, summed over all elements (fp32).

    ``source`` is the connected student pre-activation, ``target`` the teacher's; only the sign
    of ``target`` matters.
    """
    s = source.float()
    active = target > 0
    return torch.where(active, F.relu(margin - s), F.relu(margin + s)).pow(2).sum()


@register_method
class AB(FeatureMethod):
    name = "ab"

    def __init__(
        self,
        student_features: Sequence[str] | str = ("stages_pre",),
        teacher_features: Sequence[str] | str = ("stages_pre",),
        init_epochs: int = 30,
        margin: float = 1.0,
        stage_decay: float = 0.5,
        loss_scale: float = 0.003,
        main_stage_distill: bool = False,
        connector: str = "conv_bn",
        beta: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__(
            student_features=student_features,
            teacher_features=teacher_features,
            beta=beta if main_stage_distill else 0.0,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            temperature=temperature,
        )
        if connector not in CONNECTORS:
            raise UserError(
                f"method 'ab': connector must be one of {CONNECTORS}; got {connector!r}"
            )
        self.connector = connector
        self.init_epochs = int(init_epochs)
        self.margin = margin
        self.stage_decay = stage_decay
        self.loss_scale = loss_scale
        self.main_stage_distill = main_stage_distill
        self.connectors = nn.ModuleList()
        self.spatial: list[bool] = []

    def setup(self, info: MethodSetup) -> None:
        self.connectors = nn.ModuleList()
        self.spatial = []
        for s_name, t_name in self.pair_stages(info):
            s_shape, t_shape = info.student_shapes[s_name], info.teacher_shapes[t_name]
            spatial = len(s_shape) == 4 or len(t_shape) == 4
            channels = int(t_shape[1])
            self.spatial.append(spatial)
            if self.connector == "identity_if_same" and s_shape[1:] == t_shape[1:]:
                self.connectors.append(nn.Identity())
                continue
            self.connectors.append(
                nn.Sequential(
                    pointwise(int(s_shape[1]), channels, spatial=spatial, bias=False),
                    batch_norm(channels, spatial=spatial),
                )
            )

    def connect(self, index: int, f_s: Tensor) -> Tensor:
        """The student feature of pair ``index`` through its connector."""
        return self.connectors[index](as_map(f_s) if self.spatial[index] else f_s)

    def pair_loss(self, index: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        source, target = match_spatial(self.connect(index, f_s), f_t)
        weight = self.stage_decay ** (len(self.pairs) - 1 - index)
        return weight * boundary_loss(source, target, self.margin) / f_s.shape[0] * self.loss_scale

    def init_forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        return {self.name: self.feature_loss(self.paired_features(student, teacher))}

    def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """The student (its feature layers; the classifier gets no gradient) and connectors."""
        return list(student.parameters()) + list(self.connectors.parameters())
