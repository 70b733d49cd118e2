"""Plain accuracy of a model on a split, outside Lightning (teachers, dry checks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from hpmkd.data.augment import BatchTransform


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    transform: BatchTransform,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> float | None:
    """Top-1 accuracy in percent (``None`` for an empty split). Leaves the model in eval mode."""
    if len(y) == 0:
        return None
    model.eval().to(device)
    metric: MulticlassAccuracy | None = None
    for start in range(0, len(y), batch_size):
        xb = transform(x[start : start + batch_size].to(device), train=False)
        logits = model(xb)
        if metric is None:
            # this process's split only: never synchronised with other DDP ranks; float64 so
            # that the percentage is exact to the last printed digit
            metric = MulticlassAccuracy(logits.shape[1], average="micro", sync_on_compute=False)
            metric = metric.to(logits.device).set_dtype(torch.float64)
        metric.update(logits, y[start : start + batch_size].to(logits.device))
    assert metric is not None
    return 100.0 * float(metric.compute())
