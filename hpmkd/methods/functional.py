"""Loss math shared by several methods, written once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def tempered_kl_per_sample(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float
) -> Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` of each sample, shape (N,).

    Teacher distribution first, both sides as log-probabilities (no NaN from ``log(softmax)``),
    computed in fp32 whatever the autocast dtype of the logits. Written out rather than through
    ``F.kl_div`` (the same terms, ``p_t * (log p_t - log p_s)``): kl_div has no vmap batching rule,
    and packed sweeps (engine/packed_fit.py) vmap this loss over members.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl * temperature**2


def tempered_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(p_t || p_s)`` summed over classes, averaged over the batch ("batchmean")."""
    return tempered_kl_per_sample(student_logits, teacher_logits, temperature).mean()


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the labels, in fp32 whatever the autocast dtype of the logits."""
    return F.cross_entropy(logits if logits.dtype == torch.float32 else logits.float(), labels)
