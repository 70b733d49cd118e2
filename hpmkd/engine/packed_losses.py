"""Batched loss terms of a packed fit for the methods that have them: every member's terms in
one call on ``[members, batch, classes]`` logits, the same values as the method's own
``forward`` on each member's batch (tests/test_packed_losses.py), without ``vmap``'s per-op
batching rules (which for losses this small cost more than the arithmetic); KD's teacher side,
the same for every step a sample is in, is computed once per pack. Other methods keep their
vmapped computation (``packed_fit._group_terms``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import DistillMethod
from hpmkd.methods.ce import CrossEntropy
from hpmkd.methods.functional import tempered_kl_to_teacher, tempered_log_probs
from hpmkd.methods.kd import KD


class BatchedTerms:
    """A method's loss terms for every member of a loss group in one call."""

    def __init__(self, method: DistillMethod) -> None:
        self.method = method

    def teacher_rows(self, logits: Tensor) -> Tensor:
        """What the terms read of the teacher, from its logits ``[..., classes]``: for KD its
        tempered log-probabilities, computed once for a whole table (a sample's row does not
        depend on its batch); the logits otherwise."""
        if type(self.method) is KD:
            flat = tempered_log_probs(logits.flatten(0, -2), self.method.temperature)
            return flat.view(logits.shape)
        return logits

    def __call__(self, logits: Tensor, teacher: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        """Each member's named loss terms (shape ``[members]``), as the method's ``forward`` names
        and computes them for one member's batch; ``teacher`` from ``teacher_rows``."""
        method = self.method
        if type(method) is CrossEntropy:
            ce = _cross_entropy(logits, labels)
            return {"ce": ce if method.ce_weight == 1.0 else method.ce_weight * ce}
        assert isinstance(method, KD) and teacher is not None
        members, batch, classes = logits.shape
        kl = tempered_kl_to_teacher(
            logits.reshape(-1, classes), teacher.reshape(-1, classes), method.temperature
        )
        return {
            "ce": method.ce_weight * _cross_entropy(logits, labels),
            "kd": method.kd_weight * kl.view(members, batch).mean(1),
        }


def batched_form(method: DistillMethod) -> BatchedTerms | None:
    """The batched terms of ``method`` (None: it has none; the pack vmaps the method itself)."""
    return BatchedTerms(method) if type(method) in (CrossEntropy, KD) else None


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per member: the mean cross-entropy of its batch, in fp32 (``functional.cross_entropy``)."""
    members, batch, classes = logits.shape
    # rows of classes, as a fit alone's batch is laid out (the fast path of log_softmax)
    flat = F.cross_entropy(
        logits.float().reshape(-1, classes), labels.reshape(-1), reduction="none"
    )
    return flat.view(members, batch).mean(1)
