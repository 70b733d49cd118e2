"""Lightning loaders over ``StreamSplits``: worker processes decode and transform, the device
normalises.

Each batch is ``(x, y, sample_index)`` like the in-memory loader's, ``x`` uint8 NCHW. Under DDP
Lightning gives every loader a DistributedSampler (``use_distributed_sampler``, on by default),
so each rank reads its own share of the files.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hpmkd.data.stream import StreamSplits
from hpmkd.data.stream_transforms import ImagePipeline, pipelines
from hpmkd.errors import UserError

log = logging.getLogger("hpmkd")

MAX_AUTO_WORKERS = 8


class PipelineSplit(Dataset):
    """``(pipeline(image), label, index)`` for item ``index`` of a dataset of (image, label)."""

    def __init__(self, dataset: Dataset, pipeline: ImagePipeline) -> None:
        self.dataset, self.pipeline = dataset, pipeline

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image, label = self.dataset[index]
        return self.pipeline(image), int(label), index


def worker_context() -> str | None:
    """Fork the workers on Linux, also inside DDP ranks that were spawned (where the default
    would be to spawn them too, each importing torch again: seconds per worker)."""
    return "fork" if sys.platform.startswith("linux") else None


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(samples: int, batch_size: int, processes: int = 1) -> int:
    """Worker processes per loader: the CPUs each training process has (one of them left to the
    training loop once there are more than two), at most one per batch and at most 8."""
    cores = max(1, cpu_count() // max(1, processes))
    workers = cores - 1 if cores > 2 else cores
    return max(1, min(workers, MAX_AUTO_WORKERS, math.ceil(samples / max(1, batch_size))))


def configured_workers(value: object, samples: int, batch_size: int, processes: int = 1) -> int:
    """``data.workers``: ``null``/``auto`` picks ``auto_workers``, else an int >= 0."""
    if value is None or value == "auto":
        return auto_workers(samples, batch_size, processes)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"data.workers must be auto or an int >= 0, got {value!r}")
    return value


class StreamDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``StreamSplits``: ``data.transforms.train`` on the training
    split (``augment=False``: the eval pipeline), ``data.transforms.eval`` on the others, run in
    ``workers`` processes (persistent between epochs); pinned memory when the trainer is on a
    CUDA device."""

    def __init__(
        self,
        splits: StreamSplits,
        batch_size: int,
        eval_batch_size: int,
        workers: int | str | None = None,
        *,
        augment: bool = True,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.workers = workers
        self.augment = augment
        self.pipelines = pipelines(splits.transforms)
        self.pin_memory = False

    def with_batch_size(self, batch_size: int) -> StreamDataModule:
        """The same data module with another training batch size."""
        return StreamDataModule(
            self.splits, batch_size, self.eval_batch_size, self.workers, augment=self.augment
        )

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        self.pin_memory = device is not None and device.type == "cuda"

    def _loader(
        self, dataset: Dataset, pipeline: str, batch_size: int, shuffle: bool
    ) -> DataLoader:
        processes = self.trainer.world_size if self.trainer is not None else 1
        workers = configured_workers(self.workers, len(dataset), batch_size, processes)
        return DataLoader(
            PipelineSplit(dataset, self.pipelines[pipeline]),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            multiprocessing_context=worker_context() if workers else None,
        )

    def train_dataloader(self) -> DataLoader:
        pipeline = "train" if self.augment else "eval"
        return self._loader(self.splits.train, pipeline, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val, "eval", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test, "eval", self.eval_batch_size, shuffle=False)


def stream_batches(
    splits: StreamSplits, split: str, batch_size: int, workers: int | str | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(uint8 images, labels)`` batches of one split through the eval pipeline, in order."""
    dataset = getattr(splits, split)
    pipeline = pipelines(splits.transforms)["eval"]
    count = configured_workers(workers, len(dataset), batch_size)
    loader = DataLoader(
        PipelineSplit(dataset, pipeline),
        batch_size=batch_size,
        num_workers=count,
        multiprocessing_context=worker_context() if count else None,
    )
    for x, y, _ in loader:
        yield x, y


def stream_head(splits: StreamSplits, n: int) -> Tensor:
    """The first ``n`` training images through the eval pipeline, as one uint8 batch."""
    pipeline = pipelines(splits.transforms)["eval"]
    return torch.stack([pipeline(splits.train[i][0]) for i in range(min(n, len(splits.train)))])
