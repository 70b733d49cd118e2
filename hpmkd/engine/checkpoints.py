"""A fit's checkpoints: ``best.ckpt`` (best validation accuracy) and the resumable ``last.ckpt``.

``last.ckpt`` is written after an epoch once ``every_s`` seconds have passed since it was last
written, after the final epoch, and when training stops early (``every_s=0``: after every
epoch). For a model whose epoch takes milliseconds, writing two checkpoint files per epoch costs
more than the epoch; a crash then loses at most ``every_s`` seconds of training.

Between two writes of ``last.ckpt`` a better epoch's checkpoint is kept in memory (a copy on the
CPU) and written just before ``last.ckpt``, so the files on disk always belong to one moment of
training: a resume never finds a best checkpoint from epochs it is about to train again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor


class CheckpointClock:
    """Whether ``last.ckpt`` is due after the current epoch (decided once per epoch)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = float(every_s)
        self._written = time.monotonic()
        self._decided: tuple[int, bool] | None = None

    def due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        if self._decided is None or self._decided[0] != epoch:
            final = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
            elapsed = time.monotonic() - self._written >= self.every_s
            # ranks must agree; several processes train large models, whose epochs are long
            many = trainer.world_size > 1
            due = self.every_s <= 0 or final or trainer.should_stop or elapsed or many
            self._decided = (epoch, due)
        return self._decided[1]

    def written(self) -> None:
        self._written = time.monotonic()


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: written at once when ``last.ckpt`` is due, else kept until it is."""

    def __init__(self, clock: CheckpointClock, dirpath: Path) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor="val/acc",
            mode="max",
            enable_version_counter=False,
        )
        self.clock = clock
        self._pending: tuple[str, dict[str, Any]] | None = None

    @property
    def state_key(self) -> str:  # ModelCheckpoint's: last.ckpt files written before stay resumable
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self.clock.due(trainer):
            self._pending = None
            super()._save_checkpoint(trainer, filepath)
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        copy = apply_to_collection(checkpoint, Tensor, lambda t: t.detach().to("cpu", copy=True))
        self._pending = (filepath, copy)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def write_pending(self, trainer: L.Trainer) -> None:
        if self._pending is not None:
            filepath, checkpoint = self._pending
            trainer.strategy.save_checkpoint(checkpoint, filepath)
            self._pending = None
            if trainer.is_global_zero:  # as ModelCheckpoint does (e.g. wandb's model upload)
                for logger in trainer.loggers:
                    logger.after_save_checkpoint(proxy(self))


class ResumableCheckpoint(ModelCheckpoint):
    """``last.ckpt``, when ``clock`` says it is due; writes ``best``'s kept checkpoint first."""

    def __init__(self, clock: CheckpointClock, dirpath: Path, best: BestCheckpoint | None) -> None:
        super().__init__(dirpath=dirpath, filename="last", enable_version_counter=False)
        self.clock = clock
        self.best = best

    @property
    def state_key(self) -> str:  # ModelCheckpoint's: last.ckpt files written before stay resumable
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.clock.due(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.clock.due(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step:  # stopped in an epoch not due
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self.best is not None:
            self.best.write_pending(trainer)
        super()._save_checkpoint(trainer, filepath)
        self.clock.written()

    def holds_current_step(self, trainer: L.Trainer) -> bool:
        """Whether ``last.ckpt`` on disk is the training state as it is now."""
        return self._last_global_step_saved == trainer.global_step


def resumable_now(trainer: L.Trainer) -> bool:
    """Whether a resume would start from the current state (True where no ``last.ckpt`` is
    written: nothing resumes there)."""
    callbacks = getattr(trainer, "callbacks", [])  # a packed fit's stand-in has none
    kept = [c for c in callbacks if isinstance(c, ResumableCheckpoint)]
    return all(c.holds_current_step(trainer) for c in kept)


def fit_checkpoints(
    dirpath: Path, every_s: float, has_val: bool
) -> tuple[BestCheckpoint | None, ResumableCheckpoint]:
    """The best-validation checkpoint (None without validation data) and the resumable one."""
    clock = CheckpointClock(every_s)
    best = BestCheckpoint(clock, dirpath) if has_val else None
    return best, ResumableCheckpoint(clock, dirpath, best)
