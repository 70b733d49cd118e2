"""Shared pieces of the feature-based methods (FitNets, AT, NST, FSP, VID), written once.

Conventions every feature method here follows:

- A 2-D feature ``(N, C)`` (MLP hidden layers, pooled vectors) is a map of ``C`` channels with
  1x1 spatial extent wherever a method is defined on maps (``as_map``).
- Student and teacher features are paired from the deepest backwards (``pair_from_deepest``):
  with 2 student stages and 3 teacher stages, the student's last stage meets the teacher's last
  and the student's first meets the teacher's second; the teacher's shallowest is left out.
- Maps of different spatial size are average-pooled adaptively to the smaller height and the
  smaller width (``match_spatial``), as the CRD benchmark (RepDistiller) does for AT, NST, FSP
  and VID; it pools to a square of the smaller height, which is the same on its square maps.
- Shapes the method cannot handle raise ``UserError`` naming the method, both features and both
  shapes (``shape_error``), before any training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import DistillMethod, MethodSetup, ModelOutputs
from hpmkd.methods.functional import cross_entropy, tempered_kl

log = logging.getLogger("hpmkd")

Pair = tuple[str, str]


def feature_specs(value: str | Sequence[str], method: str, arg: str) -> tuple[str, ...]:
    """A config value (one name or a list of names/aliases) as a non-empty tuple of strings."""
    specs = (value,) if isinstance(value, str) else tuple(value)
    if not specs or not all(isinstance(s, str) and s for s in specs):
        raise UserError(f"method '{method}' needs {arg} = a feature name or a list of them")
    return specs


def describe(role: str, name: str, shape: Sequence[int]) -> str:
    return f"{role} '{name}' {tuple(shape)}"


def shape_error(
    method: str,
    student: tuple[str, Sequence[int]],
    teacher: tuple[str, Sequence[int]],
    reason: str,
) -> UserError:
    """One-line UserError naming the method, both features with their shapes, and the reason."""
    return UserError(
        f"method '{method}': {describe('student', *student)} and "
        f"{describe('teacher', *teacher)}: {reason}"
    )


def check_rank(method: str, role: str, name: str, shape: Sequence[int]) -> None:
    if len(shape) not in (2, 4):
        raise UserError(
            f"method '{method}': {describe(role, name, shape)} is neither (N, C) nor (N, C, H, W)"
        )


def feature_shape(
    shapes: Mapping[str, torch.Size], method: str, role: str, name: str
) -> torch.Size:
    """The dry-run shape of a requested feature, checked to be 2-D or 4-D."""
    if name not in shapes:
        raise UserError(f"method '{method}': the {role} produced no feature '{name}'")
    shape = shapes[name]
    check_rank(method, role, name, shape)
    return shape


def spatial_size(shape: Sequence[int]) -> tuple[int, int]:
    """(H, W) of a feature shape; (1, 1) for a 2-D feature."""
    return (1, 1) if len(shape) == 2 else (int(shape[2]), int(shape[3]))


def common_size(s_shape: Sequence[int], t_shape: Sequence[int]) -> tuple[int, int]:
    """The spatial size both maps of a pair are pooled to: the smaller height and width."""
    (sh, sw), (th, tw) = spatial_size(s_shape), spatial_size(t_shape)
    return min(sh, th), min(sw, tw)


def as_map(x: Tensor) -> Tensor:
    """(N, C) -> (N, C, 1, 1); 4-D maps unchanged."""
    return x[:, :, None, None] if x.dim() == 2 else x


def pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` as a map, adaptively average-pooled to ``size`` when it is larger."""
    x = as_map(x)
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Both features as maps of the same spatial size (the smaller of the two, per dimension)."""
    size = common_size(f_s.shape, f_t.shape)
    return pool_to(f_s, size), pool_to(f_t, size)


def fp32_bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched ``a @ b`` in fp32 even under autocast (which would run it in half precision)."""
    with torch.autocast(a.device.type, enabled=False):
        return torch.bmm(a.float(), b.float())


def pair_from_deepest(method: str, student: Sequence[str], teacher: Sequence[str]) -> list[Pair]:
    """Pair student and teacher feature names from the deepest backwards, kept shallow -> deep.

    Extra shallow features of the longer list are left out.
    """
    if not student or not teacher:
        raise UserError(
            f"method '{method}' has no features to pair (student {list(student)}, "
            f"teacher {list(teacher)})"
        )
    return list(zip(reversed(student), reversed(teacher), strict=False))[::-1]


def warn_if_flat(method: str, pairs: Sequence[Pair], info: MethodSetup, what: str) -> None:
    """Log a warning for pairs whose common spatial extent is 1x1, where ``what`` is degenerate."""
    flat = [
        f"{s}/{t}"
        for s, t in pairs
        if common_size(info.student_shapes[s], info.teacher_shapes[t]) == (1, 1)
    ]
    if flat:
        log.warning(
            "%s: pairs %s have 1x1 spatial extent (2-D or pooled features): %s, so they add "
            "no training signal",
            method,
            ", ".join(flat),
            what,
        )


def pointwise(in_channels: int, out_channels: int, *, spatial: bool, bias: bool) -> nn.Module:
    """A 1x1 convolution for maps, or the equivalent linear layer for 2-D features."""
    if spatial:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)
    return nn.Linear(in_channels, out_channels, bias=bias)


def batch_norm(channels: int, *, spatial: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)


class FeatureMethod(DistillMethod):
    """Base of the feature methods: feature specs, stage pairing, CE (+ optional KD) terms.

    The CRD benchmark trains every feature method with ``CE 1 + KL 0 + beta * method``;
    ``kd_weight`` > 0 adds Hinton's tempered KL at ``temperature`` (the "+KD" combinations).
    Subclasses set ``name``, fill ``pairs`` (student name, teacher name; ``pair_stages`` does it
    for lists of stages) in ``setup`` and implement ``pair_loss`` or ``feature_loss``.
    """

    def __init__(
        self,
        student_features: str | Sequence[str],
        teacher_features: str | Sequence[str],
        beta: float,
        ce_weight: float,
        kd_weight: float,
        temperature: float,
    ) -> None:
        super().__init__()
        self.student_features = feature_specs(student_features, self.name, "student_features")
        self.teacher_features = feature_specs(teacher_features, self.name, "teacher_features")
        self.beta = beta
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.pairs: list[Pair] = []

    def pair_stages(self, info: MethodSetup) -> list[Pair]:
        """Check every requested feature's shape and pair them from the deepest backwards."""
        for name in self.student_features:
            feature_shape(info.student_shapes, self.name, "student", name)
        for name in self.teacher_features:
            feature_shape(info.teacher_shapes, self.name, "teacher", name)
        self.pairs = pair_from_deepest(self.name, self.student_features, self.teacher_features)
        return self.pairs

    def paired_features(
        self, student: ModelOutputs, teacher: ModelOutputs | None
    ) -> list[tuple[Tensor, Tensor]]:
        """The (student, teacher) tensors of every pair, in fp32, shallow -> deep."""
        if teacher is None:
            raise ValueError(f"method '{self.name}' needs a teacher")
        if not self.pairs:
            raise RuntimeError(f"method '{self.name}': setup() was not called")
        return [(student.features[s].float(), teacher.features[t].float()) for s, t in self.pairs]

    def pair_loss(self, index: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        """The method's loss on pair ``index`` (fp32 student and teacher tensors)."""
        raise NotImplementedError

    def feature_loss(self, features: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The unweighted feature loss: by default ``pair_loss`` summed over the pairs."""
        return torch.stack([self.pair_loss(i, s, t) for i, (s, t) in enumerate(features)]).sum()

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        """``ce`` always; ``kd`` when ``kd_weight`` is non-zero; the method's own term, named
        after it and weighted by ``beta``, when ``beta`` is non-zero."""
        terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels)}
        if self.kd_weight and teacher is not None:
            terms["kd"] = self.kd_weight * tempered_kl(
                student.logits, teacher.logits, self.temperature
            )
        if self.beta:
            terms[self.name] = self.beta * self.feature_loss(self.paired_features(student, teacher))
        return terms
