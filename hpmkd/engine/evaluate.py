"""Plain accuracy of a model on a split, outside Lightning (teachers, dry checks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
    correct = 0
    for start in range(0, len(y), batch_size):
        xb = transform(x[start : start + batch_size].to(device), train=False)
        pred = model(xb).argmax(dim=1)
        correct += int((pred.cpu() == y[start : start + batch_size]).sum())
    return 100.0 * correct / len(y)
