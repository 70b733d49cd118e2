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
    teacher = tempered_log_probs(teacher_logits, temperature)
    return tempered_kl_to_teacher(student_logits, teacher, temperature)


def tempered_log_probs(logits: Tensor, temperature: float) -> Tensor:
    """``log softmax(z / T)`` over classes (dim 1), in fp32."""
    return F.log_softmax(logits.float() / temperature, dim=1)


def tempered_kl_to_teacher(
    student_logits: Tensor, teacher_log_probs: Tensor, temperature: float
) -> Tensor:
    """``tempered_kl_per_sample`` from the teacher's ``tempered_log_probs`` (which a packed fit
    computes once per training sample rather than once per step)."""
    log_p_s = tempered_log_probs(student_logits, temperature)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - log_p_s)).sum(dim=1)
    return kl * temperature**2


def tempered_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(p_t || p_s)`` summed over classes, averaged over the batch ("batchmean")."""
    return tempered_kl_per_sample(student_logits, teacher_logits, temperature).mean()


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the labels, in fp32 whatever the autocast dtype of the logits."""
    return F.cross_entropy(logits if logits.dtype == torch.float32 else logits.float(), labels)
