"""SAKD: spot-adaptive distillation (Song et al., "Spot-adaptive Knowledge Distillation", IEEE TIP
2022) on top of a feature method: a policy decides, per sample and per distillation spot, whether
the student is guided there.

The SMSKD paper compares against a baseline it calls "SAKD" without defining it; reading it as
spot-adaptive KD is OUR inference (the name and the citation context fit, nothing more).

What is the paper's, as in its public code (zju-vipa/spot-adaptive-pytorch):

- Spots: the base method's stage pairs, plus the output spot (logit KD).
- Policy: one linear layer on the detached pooled features of teacher and student, concatenated;
  two logits (guide, skip) per spot; decisions by Gumbel-softmax at temperature ``tau`` (5);
  the "guide" bias starts at ``init_bias`` (10: every spot guided at first, the paper's
  ``homo`` setting of its CIFAR configs).
- Masking: a spot's loss counts only the samples routed there, and is scaled by their share of
  the batch (so all guided = the base loss, none = 0); decisions are detached in these terms.
- Student loss: ``ce_weight * CE + kd_weight * KD(guided at the output spot) + beta * sum_spots
  masked base loss``, with ``kd_weight`` 1 and T 4 as in the paper's configs.
- Policy loss: cross-entropy of a multi-path network in which, at each spot, a routed sample
  takes the teacher's feature (through an adapter onto the student's shape) and the others keep
  the student's; at the output, routed samples take the teacher's logits. It is scaled by
  ``gamma`` (2) when above the student's own CE and by ``1/gamma`` when below, plus
  ``max(0, min_route * N - sum of the output decisions)`` so at least a share of the batch is
  guided at the output.

What is ours, to fit hpmkd's method contract (one optimiser, no access to the teacher model):

- The multi-path network has only the student's path: teacher features enter it through the
  adapters, but student features never enter the teacher (the paper also runs the teacher from
  each spot onward on mixed inputs; a method here sees teacher features, not the teacher). It is
  the student run again, in eval mode, with its parameters detached (as the paper discards the
  student's gradients of this loss) and forward hooks replacing the spot features.
- The policy and adapters are trained by the student's optimiser on ``policy_weight`` times the
  policy loss (the paper: a separate SGD at half the learning rate; 0.5 mimics that for SGD).
- Decisions are hard straight-through Gumbel-softmax samples in training and the argmax (no
  noise) in eval mode.
- Masked losses are per-sample losses times 0/1 masks over the full batch: the same value as
  the paper's subset computation for AT; for FitNet the regressor's BatchNorm sees the full
  batch rather than the routed subset (static shapes, no empty-subset case).
- Supported bases: AT and FitNet, their per-sample losses computed here from the base's own
  settings (``p``; the regressor). The base's ``ce_weight``, ``kd_weight`` and ``temperature``
  are replaced by SAKD's own and may not be set in ``base_cfg``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from hpmkd.errors import UserError
from hpmkd.method_config import method_config
from hpmkd.methods.at import attention_map
from hpmkd.methods.base import (
    DistillMethod,
    MethodSetup,
    ModelOutputs,
    build_method,
    register_method,
)
from hpmkd.methods.feature_math import FeatureMethod, as_map, feature_shape, match_spatial
from hpmkd.methods.fitnet import hint_regressor
from hpmkd.methods.functional import cross_entropy, tempered_kl_per_sample

OWNED_BY_SAKD = ("ce_weight", "kd_weight", "temperature")


def _at_per_sample(base: Any, f_s: Tensor, f_t: Tensor) -> Tensor:
    m_s, m_t = match_spatial(f_s, f_t)
    return (attention_map(m_s, base.p) - attention_map(m_t, base.p)).pow(2).mean(dim=1)


def _fitnet_per_sample(base: Any, f_s: Tensor, f_t: Tensor) -> Tensor:
    if not (f_s.dim() == 2 and f_t.dim() == 2):
        f_s, f_t = as_map(f_s), as_map(f_t)
    return (base.regressor(f_s).float() - f_t).pow(2).flatten(1).mean(dim=1)


PER_SAMPLE: dict[str, Callable[[Any, Tensor, Tensor], Tensor]] = {
    "at": _at_per_sample,
    "fitnet": _fitnet_per_sample,
}


def base_config(base: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The base method's ``conf/method/<base>.yaml`` with ``overrides`` on top; bases other than
    the supported ones and overrides of the terms SAKD owns are refused."""
    if base not in PER_SAMPLE:
        raise UserError(f"sakd: unsupported base '{base}'; supported: {', '.join(PER_SAMPLE)}")
    overrides = dict(overrides or {})
    owned = sorted(set(overrides) & set(OWNED_BY_SAKD))
    if owned:
        raise UserError(
            f"sakd: base_cfg may not set {', '.join(owned)}; set method.{owned[0]} (SAKD's own)"
        )
    return method_config({**overrides, "name": base})


@register_method
class SAKD(DistillMethod):
    name = "sakd"

    def __init__(
        self,
        base: str = "at",
        base_cfg: Mapping[str, Any] | None = None,
        tau: float = 5.0,
        init_bias: float = 10.0,
        gamma: float = 2.0,
        min_route: float = 0.5,
        policy_weight: float = 0.5,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if tau <= 0 or gamma <= 0 or not 0 <= min_route <= 1:
            raise UserError(
                f"sakd: needs tau > 0, gamma > 0 and 0 <= min_route <= 1; "
                f"got tau={tau}, gamma={gamma}, min_route={min_route}"
            )
        method = build_method(base_config(base, base_cfg))
        assert isinstance(method, FeatureMethod)
        self.base = method
        self.per_sample = PER_SAMPLE[base]
        self.tau, self.init_bias, self.gamma = tau, init_bias, gamma
        self.min_route, self.policy_weight = min_route, policy_weight
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.policy: nn.Linear | None = None
        self.adapters = nn.ModuleList()
        self.spots: list[tuple[str, str]] = []
        self._student: list[nn.Module] = []  # a list: the student must not become a submodule
        self._metrics: dict[str, Tensor] = {}
        self._set_features()

    def _set_features(self) -> None:
        self.student_features = _union(self.base.student_features, ("pool", "input"))
        self.teacher_features = _union(self.base.teacher_features, ("pool",))

    def bind_features(self, student: nn.Module, teacher: nn.Module | None) -> None:
        self.base.bind_features(student, teacher)
        self._set_features()

    def setup(self, info: MethodSetup) -> None:
        self.base.setup(info)
        self.spots = list(self.base.pairs)
        self.adapters = nn.ModuleList(
            hint_regressor(
                (t, tuple(feature_shape(info.teacher_shapes, self.name, "teacher", t))),
                (s, tuple(feature_shape(info.student_shapes, self.name, "student", s))),
                relu=True,
            )
            for s, t in self.spots
        )
        width = int(info.teacher_shapes["pool"][1]) + int(info.student_shapes["pool"][1])
        self.policy = nn.Linear(width, 2 * (len(self.spots) + 1))
        with torch.no_grad():
            self.policy.bias[0::2] += self.init_bias

    def on_epoch_start(self, student: nn.Module) -> None:
        self.base.epoch = self.epoch
        self._student = [student]

    def decisions(self, student_pool: Tensor, teacher_pool: Tensor) -> Tensor:
        """(N, spots + 1) route decisions in {0, 1}, the output spot last: hard Gumbel-softmax
        samples with straight-through gradients in training, the argmax in eval mode."""
        assert self.policy is not None
        x = torch.cat([teacher_pool.detach().flatten(1), student_pool.detach().flatten(1)], 1)
        logits = self.policy(x.float()).view(len(x), -1, 2)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True)[..., 0]
        return (logits[..., 0] > logits[..., 1]).float()

    def spot_losses(self, student: ModelOutputs, teacher: ModelOutputs) -> list[Tensor]:
        """The base method's unweighted loss of each sample at each spot: (N,) per spot."""
        return [
            self.per_sample(self.base, student.features[s].float(), teacher.features[t].float())
            for s, t in self.spots
        ]

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        if teacher is None:
            raise ValueError("method 'sakd' needs a teacher")
        route = self.decisions(student.features["pool"], teacher.features["pool"])
        masks = route.detach()
        terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels)}
        if self.kd_weight:
            kl = tempered_kl_per_sample(student.logits, teacher.logits, self.temperature)
            terms["kd"] = self.kd_weight * (masks[:, -1] * kl).mean()
        if self.base.beta:
            losses = self.spot_losses(student, teacher)
            masked = torch.stack([(masks[:, k] * loss).mean() for k, loss in enumerate(losses)])
            terms[self.base.name] = self.base.beta * masked.sum()
        if self.policy_weight and self.training and self._student:
            terms["policy"] = self.policy_weight * self.policy_loss(student, teacher, labels, route)
        self._metrics = {
            f"route/{name}": masks[:, k].mean()
            for k, name in enumerate([s for s, _ in self.spots] + ["output"])
        }
        return terms

    def policy_loss(
        self, student: ModelOutputs, teacher: ModelOutputs, labels: Tensor, route: Tensor
    ) -> Tensor:
        """Gamma-scaled CE of the multi-path network plus the output-share penalty."""
        graft = self.graft_logits(student.features["input"], teacher.features, route)
        out = route[:, -1:]
        mixed = (1 - out) * graft.float() + out * teacher.logits.detach().float()
        ce = cross_entropy(mixed, labels)
        own = cross_entropy(student.logits.detach(), labels)
        scale = torch.where(ce > own, self.gamma, torch.where(ce < own, 1 / self.gamma, 1.0))
        return scale * ce + F.relu(self.min_route * len(labels) - route[:, -1].sum())

    def graft_logits(
        self, x: Tensor, teacher_features: Mapping[str, Tensor], route: Tensor
    ) -> Tensor:
        """The student, in eval mode with detached parameters, run on ``x`` with each spot's
        feature replaced, for routed samples, by the adapted teacher feature."""
        model = self._student[0]
        points: dict[str, tuple[str, str]] = model.feature_points  # type: ignore[assignment]
        handles = []
        for k, (s_name, t_name) in enumerate(self.spots):
            injected = self.adapters[k](teacher_features[t_name].detach())
            gate = route[:, k].view(-1, *[1] * (injected.dim() - 1)).to(injected.dtype)
            path, where = points[s_name]
            module = model.get_submodule(path)
            if where == "output":
                handles.append(module.register_forward_hook(_output_mixer(gate, injected)))
            else:
                handles.append(module.register_forward_pre_hook(_input_mixer(gate, injected)))
        state = {n: p.detach() for n, p in model.named_parameters()}
        state.update(dict(model.named_buffers()))
        was_training = model.training
        model.eval()
        try:
            return functional_call(model, state, (x.detach(),))
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()

    def step_metrics(self) -> dict[str, Tensor]:
        return self._metrics


def _mix(gate: Tensor, injected: Tensor, own: Tensor) -> Tensor:
    return gate * injected.to(own.dtype) + (1 - gate) * own


def _output_mixer(gate: Tensor, injected: Tensor) -> Callable[..., Tensor]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        return _mix(gate, injected, output)

    return hook


def _input_mixer(gate: Tensor, injected: Tensor) -> Callable[..., tuple[Any, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (_mix(gate, injected, args[0]), *args[1:])

    return hook


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))
