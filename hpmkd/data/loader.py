"""In-memory batches for Lightning: ``(x, y, sample_index)`` sliced straight from tensors.

With ``device_data`` the splits are copied to the training device once per fit (in ``setup``,
so in each DDP worker onto its own device) and batches are indexed there: Lightning's transfer
of the batch to the device is a no-op, and the only host-to-device copy of a step is the
batch's sample indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits


class TensorSplit(Dataset):
    """A split held in memory; a whole batch is fetched with one indexing op (``__getitems__``)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.x[i], self.y[i], torch.tensor(i)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return self.x[idx], self.y[idx], idx


def _batch_as_is(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return batch


class SplitsDataModule(L.LightningDataModule):
    """Train/val/test loaders over a ``DataSplits``; the sample index travels with each batch
    (caches and memory banks key on it)."""

    def __init__(
        self,
        splits: DataSplits,
        batch_size: int,
        eval_batch_size: int,
        device_data: bool = False,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.device_data = device_data
        self.held = splits  # the splits the loaders slice: on the host, or on the device

    def with_batch_size(self, batch_size: int) -> SplitsDataModule:
        """The same data module with another training batch size."""
        return SplitsDataModule(self.splits, batch_size, self.eval_batch_size, self.device_data)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if self.device_data and device is not None and device.type != "cpu":
            self.held = on_device(self.held, device)

    def _loader(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            TensorSplit(x, y), batch_size=batch_size, shuffle=shuffle, collate_fn=_batch_as_is
        )

    def train_dataloader(self) -> DataLoader:
        s = self.held
        return self._loader(s.x_train, s.y_train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        s = self.held
        return self._loader(s.x_val, s.y_val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        s = self.held
        return self._loader(s.x_test, s.y_test, self.eval_batch_size, shuffle=False)


def on_device(splits: DataSplits, device: torch.device) -> DataSplits:
    """``splits`` with its six tensors on ``device`` (the same object if they already are)."""
    if splits.x_train.device == device:
        return splits
    names = [f"{xy}_{split}" for split in ("train", "val", "test") for xy in ("x", "y")]
    return replace(splits, **{name: getattr(splits, name).to(device) for name in names})


def make_datamodule(
    data: DataSplits | StreamSplits,
    batch_size: int,
    eval_batch_size: int,
    *,
    device_data: bool = False,
    augment: bool = True,
    workers: int | str | None = None,
) -> L.LightningDataModule:
    """The data module for in-memory splits (``SplitsDataModule``) or streamed ones
    (``StreamDataModule``: ``augment=False`` trains on the eval pipeline; ``workers`` is
    ``data.workers``)."""
    if not isinstance(data, StreamSplits):
        return SplitsDataModule(data, batch_size, eval_batch_size, device_data)
    from hpmkd.data.stream_loader import StreamDataModule

    return StreamDataModule(data, batch_size, eval_batch_size, workers, augment=augment)


def split_size(data: DataSplits | StreamSplits, split: str) -> int:
    """Number of samples in ``split`` (train, val or test) of either kind of splits."""
    if isinstance(data, StreamSplits):
        return len(getattr(data, split))
    return len(getattr(data, f"y_{split}"))


def split_batches(
    data: DataSplits | StreamSplits, split: str, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``split`` in order, as loaded (uint8 images before normalisation)."""
    if isinstance(data, StreamSplits):
        from hpmkd.data.stream_loader import stream_batches

        yield from stream_batches(data, split, batch_size)
        return
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def head(data: DataSplits | StreamSplits, n: int) -> Tensor:
    """The first ``n`` training samples as loaded for evaluation (for dry forwards)."""
    if isinstance(data, StreamSplits):
        from hpmkd.data.stream_loader import stream_head

        return stream_head(data, n)
    return data.x_train[:n]
