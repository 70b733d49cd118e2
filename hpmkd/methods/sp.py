"""Similarity-preserving KD (Tung & Mori, ICCV 2019; METHODS.md 1.2).

For each paired feature ``Q`` (flattened to ``(b, D)``) the batch Gram matrix ``G = Q Q^T`` is
L2-normalised row by row, and the loss is ``||G_t - G_s||_F^2 / b^2``, summed over the pairs.
Only ``b x b`` matrices are compared, so student and teacher features may differ in channels,
spatial size and even rank (a 2-D feature is a 1x1 map). Weighted ``ce_weight * CE +
beta * L_SP`` with the CRD benchmark's CE 1, beta 3000, on the last stage (``last_stage``, after
its activation). RepDistiller takes ``feat[-2]``: the same for CIFAR ResNets and VGG, but the RAW
last stage output (``stage3_pre``, before the final BN-ReLU) for WRNs; ``fidelity=repdistiller``
(the CRD presets) asks for ``feat[-2]`` (``hpmkd.models.features``). With several features,
student and teacher stages are paired from the deepest backwards (see ``pair_deepest_first``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from hpmkd.methods.base import register_method
from hpmkd.methods.relation_math import FeaturePairMethod, flatten_batch, row_normalize


def normalized_gram(f: Tensor) -> Tensor:
    q = flatten_batch(f)
    return row_normalize(q @ q.t(), p=2)


@register_method
class SP(FeaturePairMethod):
    name = "sp"

    def __init__(
        self,
        student_features: Sequence[str] = ("last_stage",),
        teacher_features: Sequence[str] = ("last_stage",),
        beta: float = 3000.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__(student_features, teacher_features, beta, ce_weight)

    def pair_loss(self, k: int, f_s: Tensor, f_t: Tensor) -> dict[str, Tensor]:
        diff = normalized_gram(f_t) - normalized_gram(f_s)
        return {"sp": diff.pow(2).sum() / f_s.shape[0] ** 2}
