"""Math shared by the logit-relation and sample-relation methods (DKD, DIST, SP, CC, RKD, PKT).

Everything here works on fp32 copies of its inputs and returns batch-relation quantities
(``N x N`` matrices, per-row correlations), so student and teacher features of any widths and
spatial sizes can be compared. ``FeaturePairMethod`` is the common frame of the feature
relation methods: ``ce_weight * CE + beta * sum over feature pairs of the method's loss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hpmkd.errors import UserError
from hpmkd.methods.base import DistillMethod, MethodSetup, ModelOutputs
from hpmkd.methods.functional import cross_entropy


def flatten_batch(x: Tensor) -> Tensor:
    """``(N, ...)`` -> ``(N, D)`` in fp32; a 4-D map becomes its flattened ``C*H*W`` vector."""
    return x.float().reshape(x.shape[0], -1)


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``e`` ``(N, D)``: an ``(N, N)`` matrix with an
    exact zero diagonal. Squared distances are clamped at ``eps`` before the square root, so the
    gradient stays finite for coinciding rows."""
    squared = e.pow(2).sum(dim=1)
    d2 = (squared[:, None] + squared[None, :] - 2.0 * e @ e.t()).clamp_min(eps)
    off_diagonal = 1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return d2.sqrt() * off_diagonal


def cosine_similarity_matrix(e: Tensor, eps: float = 1e-7) -> Tensor:
    """``(N, N)`` cosine similarities of the rows of ``e``; an all-zero row has similarity 0
    with everything (rows are divided by ``norm + eps``)."""
    unit = e / (e.norm(dim=1, keepdim=True) + eps)
    return unit @ unit.t()


def row_normalize(m: Tensor, p: float, eps: float = 1e-12) -> Tensor:
    """Each row of ``m`` divided by its ``p``-norm (``p=2``: SP's Gram rows; ``p=1`` on a
    non-negative kernel: PKT's conditional probabilities)."""
    return m / m.norm(p=p, dim=1, keepdim=True).clamp_min(eps)


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation between matching rows of ``a`` and ``b`` ``(N, D)`` -> ``(N,)``.

    A constant row has correlation 0 with anything (the product of the centred norms gets
    ``eps`` added, as in the DIST reference code)."""
    a_c = a - a.mean(dim=1, keepdim=True)
    b_c = b - b.mean(dim=1, keepdim=True)
    return (a_c * b_c).sum(dim=1) / (a_c.norm(dim=1) * b_c.norm(dim=1) + eps)


def require_same_shape(method: str, what: str, student: Tensor, teacher: Tensor) -> None:
    """UserError (one line, naming the method and both shapes) unless the shapes agree."""
    if student.shape != teacher.shape:
        raise UserError(
            f"method '{method}': student {what} {tuple(student.shape)} and teacher {what} "
            f"{tuple(teacher.shape)} differ in shape"
        )


def pair_deepest_first(
    method: str, student_names: Sequence[str], teacher_names: Sequence[str]
) -> list[tuple[str, str]]:
    """Pair student and teacher feature names from the deepest backwards (zip of the reversed
    lists), returned shallow -> deep. Extra shallow features of the longer list are unused."""
    if not student_names or not teacher_names:
        raise UserError(
            f"method '{method}' needs at least one student and one teacher feature; got "
            f"student {list(student_names)} and teacher {list(teacher_names)}"
        )
    pairs = list(zip(reversed(student_names), reversed(teacher_names), strict=False))
    return pairs[::-1]


class FeaturePairMethod(DistillMethod):
    """``ce_weight * CE(z_s, y) + beta * sum over (student, teacher) feature pairs of
    pair_loss``. Subclasses implement ``pair_loss(k, f_s, f_t)`` (the k-th pair, fp32 tensors of
    the same batch size) returning named, not yet ``beta``-weighted terms; terms of the same name
    are summed over the pairs."""

    def __init__(
        self,
        student_features: Sequence[str],
        teacher_features: Sequence[str],
        beta: float,
        ce_weight: float,
    ) -> None:
        super().__init__()
        self.student_features = tuple(student_features)
        self.teacher_features = tuple(teacher_features)
        self.beta = beta
        self.ce_weight = ce_weight

    def feature_pairs(self) -> list[tuple[str, str]]:
        return pair_deepest_first(self.name, self.student_features, self.teacher_features)

    def setup(self, info: MethodSetup) -> None:
        self.feature_pairs()  # a config without a usable pair fails before training

    def pair_loss(self, k: int, f_s: Tensor, f_t: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        assert teacher is not None
        terms = {"ce": self.ce_weight * cross_entropy(student.logits, labels)}
        relation: dict[str, Tensor] = {}
        for k, (s_name, t_name) in enumerate(self.feature_pairs()):
            f_s, f_t = student.features[s_name], teacher.features[t_name]
            if f_s.shape[0] != f_t.shape[0]:
                raise UserError(
                    f"method '{self.name}': student feature '{s_name}' {tuple(f_s.shape)} and "
                    f"teacher feature '{t_name}' {tuple(f_t.shape)} have different batch sizes"
                )
            for term, value in self.pair_loss(k, f_s.float(), f_t.float()).items():
                relation[term] = relation[term] + value if term in relation else value
        terms.update({term: self.beta * value for term, value in relation.items()})
        return terms
