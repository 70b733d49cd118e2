"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022; METHODS.md 1.2).

Classic KD splits per sample into ``KD = TCKD + (1 - p_t^gt) * NCKD``:
- TCKD: ``T^2 * KL`` between the binary distributions (target class, all others) of teacher and
  student, both tempered;
- NCKD: ``T^2 * KL`` between the tempered distributions over the non-target classes only.
DKD weights them independently:
``L = ce_weight * CE + w(epoch) * (alpha * TCKD + beta * NCKD)``, batch means, teacher first,
fp32 (both through ``tempered_kl``). Defaults are mdistiller's CIFAR-100 setting: CE 1, alpha 1,
beta 8, T 4, 20 warm-up epochs; per-pair presets set beta 2 (resnet56->resnet20,
resnet110->resnet32) or 6 (vgg13->vgg8, wrn_40_2->wrn_16_2/wrn_40_1).

Decisions:
- warm-up: ``w = min((epoch + 1) / warmup_epochs, 1)``. mdistiller counts epochs from 1 and uses
  ``min(epoch / warmup, 1)``; ``self.epoch`` is 0-based, hence the ``+ 1`` (the first epoch already
  trains with 1/20 of the weight). ``warmup_epochs: 0`` disables the warm-up.
- numerics: the binary split is taken in log space (``log(1 - p_gt)`` as the log-sum-exp of the
  non-target logits) and NCKD drops the target column instead of the reference's ``-1000``
  offset, so neither half can produce ``log(0)``; the values are the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hpmkd.methods.base import DistillMethod, ModelOutputs, register_method
from hpmkd.methods.functional import cross_entropy, tempered_kl
from hpmkd.methods.relation_math import require_same_shape


def split_target(logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``(N, C)`` logits -> (binary logits ``(N, 2)``, non-target logits ``(N, C - 1)``).

    The binary logits are scaled so that ``softmax(binary / T)`` is exactly
    ``[p_gt, 1 - p_gt]`` of ``softmax(logits / T)``; both feed ``tempered_kl`` directly."""
    z = logits.float()
    n, c = z.shape
    is_target = F.one_hot(labels, c).bool()
    target = z.gather(1, labels[:, None])
    others = z[~is_target].reshape(n, c - 1)
    rest = temperature * torch.logsumexp(others / temperature, dim=1, keepdim=True)
    return torch.cat([target, rest], dim=1), others


@register_method
class DKD(DistillMethod):
    name = "dkd"

    def __init__(
        self,
        ce_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs

    def warmup_factor(self) -> float:
        if self.warmup_epochs <= 0:
            return 1.0
        return min((self.epoch + 1) / self.warmup_epochs, 1.0)

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, labels: Tensor, index: Tensor
    ) -> dict[str, Tensor]:
        assert teacher is not None
        require_same_shape(self.name, "logits", student.logits, teacher.logits)
        t = self.temperature
        binary_s, others_s = split_target(student.logits, labels, t)
        binary_t, others_t = split_target(teacher.logits, labels, t)
        w = self.warmup_factor()
        return {
            "ce": self.ce_weight * cross_entropy(student.logits, labels),
            "tckd": w * self.alpha * tempered_kl(binary_s, binary_t, t),
            "nckd": w * self.beta * tempered_kl(others_s, others_t, t),
        }
