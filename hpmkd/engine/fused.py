"""The fused epoch loop: one Lightning training step per epoch for in-memory tabular data.

For models of a few thousand parameters Lightning's per-batch machinery (hooks, closures,
progress, the optimisation loop) costs more than the batch's arithmetic. With the fused loop the
train loader yields one item per epoch, ``EpochBatches``: the split's rows gathered in the epoch's
sample order, drawn exactly as ``DataLoader(shuffle=True)`` draws it (the same global-RNG calls
in the same order), so that each batch is a slice. ``DistillModule`` then runs every batch of the
epoch inside one ``training_step`` with manual optimisation: the same optimiser steps, the
scheduler stepped at the epoch's end, and checkpoints and every epoch hook of every callback as
before; the loggers' step counts the batches, as in Lightning's own loop.

Validation runs at the end of that step too (Lightning's validation loop, run once per epoch,
costs more than a small model's whole epoch): the student's accuracy on the validation split,
logged as ``val/acc`` for the checkpoint and the history, with the global-RNG draw the
validation loader's iterator would have made. The same seed gives the same weights and curves as
Lightning's per-batch loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hpmkd.data.loader import SplitsDataModule
from hpmkd.data.splits import DataSplits


@dataclass
class Validation:
    """The validation split, evaluated in chunks of ``batch_size`` rows."""

    x: Tensor
    y: Tensor
    batch_size: int


@dataclass
class EpochBatches:
    """One epoch: the training split's rows in training order (gathered once: a batch is a
    slice), their sample indices, the batch size and the validation split to evaluate after them
    (None: no validation)."""

    x: Tensor
    y: Tensor
    order: Tensor
    batch_size: int
    validation: Validation | None = None

    def batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Each batch's inputs, labels and sample indices, in training order."""
        for start in range(0, len(self.order), self.batch_size):
            end = start + self.batch_size
            yield self.x[start:end], self.y[start:end], self.order[start:end]


class _OneEpoch(Dataset):
    """A dataset of one item, drawn anew each epoch: the whole epoch's batches."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, validation: Validation | None):
        self.x, self.y, self.batch_size, self.validation = x, y, batch_size, validation

    def __len__(self) -> int:
        return 1

    def __getitem__(self, item: int) -> EpochBatches:
        order = sampler_order(len(self.y)).to(self.x.device)
        x, y = self.x.index_select(0, order), self.y.index_select(0, order)
        return EpochBatches(x, y, order, self.batch_size, self.validation)


def sampler_order(n: int) -> Tensor:
    """The sample order ``RandomSampler(range(n))`` yields, drawn as it draws it (a seed from the
    global RNG, then a permutation from a generator seeded with it), as one tensor."""
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def skip_loader_seed() -> None:
    """The global-RNG draw a DataLoader makes when its iterator starts (its base seed): a
    validation loader's, each epoch, so that later epochs draw the batch orders they would."""
    torch.empty((), dtype=torch.int64).random_()


def correct_top_k(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """How many rows of ``logits`` (``[..., rows, classes]``) have their label among the ``k``
    largest logits, per leading index: top-1 is the argmax; top-k counts a label when fewer than
    ``k`` logits exceed its own (no sort)."""
    if k == 1:
        return (logits.argmax(-1) == y).sum(-1)
    own = logits.gather(-1, y.expand(logits.shape[:-1]).unsqueeze(-1))
    return ((logits > own).sum(-1) < k).sum(-1)


class FusedEpochs(L.LightningDataModule):
    """``inner``'s data module with a training loader of one ``EpochBatches`` per epoch, which
    carries the validation split (the trainer runs no validation loop: ``fused_trainer``)."""

    def __init__(self, inner: SplitsDataModule) -> None:
        super().__init__()
        self.inner = inner

    def setup(self, stage: str) -> None:
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def train_dataloader(self) -> DataLoader:
        held = self.inner.held
        validation = None
        if len(held.y_val):
            validation = Validation(held.x_val, held.y_val, self.inner.eval_batch_size)
        epoch = _OneEpoch(held.x_train, held.y_train, self.inner.batch_size, validation)
        return DataLoader(epoch, batch_size=None, collate_fn=None)

    def val_dataloader(self) -> DataLoader:  # defined, never loaded: limit_val_batches=0
        return self.inner.val_dataloader()


def fused_trainer(trainer: L.Trainer) -> None:
    """Turn off ``trainer``'s validation loop: the fused epoch validates in its step."""
    trainer.limit_val_batches = 0


_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")
_VALIDATION_HOOKS = tuple(
    f"on_validation_{when}"
    for when in ("start", "epoch_start", "batch_start", "batch_end", "epoch_end", "end")
)
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step",
               "on_before_zero_grad")  # fmt: skip


def direct_steps(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether no callback, no module hook and no precision plugin acts between a fused step's
    backward and its optimiser step (then the fused loop calls them directly)."""
    hooks = [(type(c), Callback) for c in trainer.callbacks] + [(type(module), L.LightningModule)]
    overridden = any(getattr(kind, h) is not getattr(base, h) for kind, base in hooks
                     for h in _STEP_HOOKS)  # fmt: skip
    return not overridden and type(trainer.precision_plugin) is Precision


def fused_refusal(
    datamodule: L.LightningDataModule, trainer: L.Trainer, callbacks: Sequence[Callback]
) -> str | None:
    """Why the fused loop cannot give this fit's exact results (None: it can)."""
    if type(datamodule) is not SplitsDataModule or not isinstance(datamodule.splits, DataSplits):
        return "the data is not an in-memory split"
    if datamodule.splits.is_image:
        return "image data (per-batch progress)"
    if trainer.world_size > 1:
        return "several processes"
    if trainer.gradient_clip_val or trainer.accumulate_grad_batches != 1:
        return "gradient clipping or accumulation"
    if trainer.max_steps != -1 or trainer.limit_train_batches != 1.0:
        return "a step or batch limit"
    if trainer.val_check_interval != 1.0 or trainer.check_val_every_n_epoch != 1:
        return "validation within epochs or not every epoch"
    if trainer.limit_val_batches not in (0, 1.0) or trainer.num_sanity_val_steps:
        return "a validation batch limit or sanity validation steps"
    for callback in callbacks:
        if isinstance(callback, ProgressBar) or _per_epoch_checkpoint(callback):
            continue
        kind = type(callback)
        if any(getattr(kind, hook) is not getattr(Callback, hook) for hook in _BATCH_HOOKS):
            return f"{type(callback).__name__} has per-batch hooks"
        if getattr(kind, "reads_step_validation", False):
            continue
        if any(getattr(kind, hook) is not getattr(Callback, hook) for hook in _VALIDATION_HOOKS):
            return f"{type(callback).__name__} has validation hooks"
    return None


def _per_epoch_checkpoint(callback: Callback) -> bool:
    """A ModelCheckpoint that saves per epoch only (its batch hook does nothing then)."""
    return (
        isinstance(callback, ModelCheckpoint)
        and not callback._every_n_train_steps
        and callback._train_time_interval is None
    )
