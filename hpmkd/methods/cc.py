"""Correlation congruence (Peng et al., ICCV 2019; METHODS.md 1.2), as the CRD benchmark runs it.

Student and teacher features (the pooled vector by default, flattened) each go through a
trainable linear embedding to ``embed_dim`` (128, CRD's ``feat_dim``); both embeddings are
connectors optimised with the student (the teacher network itself stays frozen). The loss on the
embeddings ``e_s``, ``e_t`` is chosen by ``kernel``:
- ``"crd"`` (default): the loss the CRD benchmark (RepDistiller) uses, code the CC authors
  shared with it: with ``delta_i = |e_s,i - e_t,i|``, the mean over consecutive samples of the
  batch of ``sum_d delta_i,d * delta_i+1,d`` (0 for a batch of one);
- ``"gaussian"``: the paper's correlation congruence, ``||C_t - C_s||^2 / N^2`` with ``C`` the
  ``P``-order Taylor expansion of the Gaussian RBF kernel on L2-normalised embeddings,
  ``C_ij = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! * (e_i . e_j)^p`` (paper: gamma 0.4,
  P 2).
``L = ce_weight * CE + beta * L_CC`` with the benchmark's CE 1 and beta 0.02. Several features
are paired from the deepest backwards, one pair of embeddings each, and summed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.methods.base import MethodSetup, register_method
from hpmkd.methods.relation_math import FeaturePairMethod, cosine_similarity_matrix, flatten_batch

KERNELS = ("crd", "gaussian")


def consecutive_congruence(e_s: Tensor, e_t: Tensor) -> Tensor:
    delta = (e_s - e_t).abs()
    if len(delta) < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


def taylor_rbf_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    cosine = cosine_similarity_matrix(e, eps=1e-12)
    return sum(
        math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * cosine.pow(p)
        for p in range(order + 1)
    )


@register_method
class CC(FeaturePairMethod):
    name = "cc"

    def __init__(
        self,
        student_features: Sequence[str] = ("pool",),
        teacher_features: Sequence[str] = ("pool",),
        beta: float = 0.02,
        ce_weight: float = 1.0,
        embed_dim: int = 128,
        kernel: str = "crd",
        gamma: float = 0.4,
        order: int = 2,
    ) -> None:
        super().__init__(student_features, teacher_features, beta, ce_weight)
        if kernel not in KERNELS:
            raise UserError(f"method 'cc': unknown kernel '{kernel}'; valid: {', '.join(KERNELS)}")
        self.embed_dim = embed_dim
        self.kernel = kernel
        self.gamma = gamma
        self.order = order
        self.embed_s = nn.ModuleList()
        self.embed_t = nn.ModuleList()

    def setup(self, info: MethodSetup) -> None:
        pairs = self.feature_pairs()
        self.embed_s = nn.ModuleList(
            nn.Linear(math.prod(info.student_shapes[s][1:]), self.embed_dim) for s, _ in pairs
        )
        self.embed_t = nn.ModuleList(
            nn.Linear(math.prod(info.teacher_shapes[t][1:]), self.embed_dim) for _, t in pairs
        )

    def pair_loss(self, k: int, f_s: Tensor, f_t: Tensor) -> dict[str, Tensor]:
        if k >= len(self.embed_s):
            raise RuntimeError("method 'cc': setup() must run before the first forward")
        embed_s, embed_t = self.embed_s[k], self.embed_t[k]
        if (
            math.prod(f_s.shape[1:]) != embed_s.in_features
            or math.prod(f_t.shape[1:]) != embed_t.in_features
        ):
            s_name, t_name = self.feature_pairs()[k]
            raise UserError(
                f"method 'cc': student feature '{s_name}' {tuple(f_s.shape)} and teacher feature "
                f"'{t_name}' {tuple(f_t.shape)} differ from the shapes the embeddings were built "
                f"for ({embed_s.in_features} and {embed_t.in_features} values per sample)"
            )
        e_s, e_t = embed_s(flatten_batch(f_s)), embed_t(flatten_batch(f_t))
        if self.kernel == "crd":
            return {"cc": consecutive_congruence(e_s, e_t)}
        c_s = taylor_rbf_correlation(e_s, self.gamma, self.order)
        c_t = taylor_rbf_correlation(e_t, self.gamma, self.order)
        return {"cc": torch.mean((c_t - c_s) ** 2)}
