"""Plain accuracy of a model on a split, outside Lightning (teachers, dry checks)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from hpmkd.data.augment import BatchTransform
from hpmkd.data.loader import split_batches
from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits


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
    batches = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
    return _accuracy(model, batches, transform, device)


def split_accuracy(
    model: nn.Module,
    data: DataSplits | StreamSplits,
    split: str,
    transform: BatchTransform,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> float | None:
    """``accuracy`` on a split of in-memory or streamed data."""
    return _accuracy(model, split_batches(data, split, batch_size), transform, device)


def _accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    transform: BatchTransform,
    device: torch.device | str,
) -> float | None:
    model.eval().to(device)
    metric: MulticlassAccuracy | None = None
    for xs, ys in batches:
        xb = transform(xs.to(device), train=False)
        logits = model(xb)
        if metric is None:
            # this process's split only: never synchronised with other DDP ranks; float64 so
            # that the percentage is exact to the last printed digit
            metric = MulticlassAccuracy(logits.shape[1], average="micro", sync_on_compute=False)
            metric = metric.to(logits.device).set_dtype(torch.float64)
        metric.update(logits, ys.to(logits.device))
    if metric is None:  # an empty split
        return None
    return 100.0 * float(metric.compute())
