"""Batched loss terms of a packed fit for the methods that have them: every member's terms in
one call on ``[members, batch, classes]`` logits, the same values as the method's own
``forward`` on each member's batch (tests/test_packed_losses.py), without ``vmap``'s per-op
batching rules (which for losses this small cost more than the arithmetic). Other methods keep
their vmapped computation (``packed_fit._group_terms``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import DistillMethod
from hpmkd.methods.ce import CrossEntropy
from hpmkd.methods.functional import tempered_kl_per_sample
from hpmkd.methods.kd import KD


def batched_terms(
    method: DistillMethod, logits: Tensor, teacher: Tensor | None, labels: Tensor
) -> dict[str, Tensor] | None:
    """Each member's named loss terms (shape ``[members]``) of ``method``, as its ``forward``
    names and computes them for one member's batch; None: no batched form (use vmap)."""
    if type(method) is CrossEntropy:
        ce = _cross_entropy(logits, labels)
        return {"ce": ce if method.ce_weight == 1.0 else method.ce_weight * ce}
    if type(method) is KD and teacher is not None:
        members, batch, classes = logits.shape
        kl = tempered_kl_per_sample(
            logits.reshape(-1, classes), teacher.reshape(-1, classes), method.temperature
        )
        return {
            "ce": method.ce_weight * _cross_entropy(logits, labels),
            "kd": method.kd_weight * kl.view(members, batch).mean(1),
        }
    return None


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per member: the mean cross-entropy of its batch, in fp32 (``functional.cross_entropy``)."""
    per_sample = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
    return per_sample.mean(1)
