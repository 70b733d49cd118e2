"""The rich progress bar of a fit; for fused epochs, one bar over the epochs.

A fused epoch is a single training step (``engine/fused.py``): Lightning's bar would show a new
"1/1" bar per epoch and rebuild its metrics every epoch, which costs a small model's epoch several
percent. Fused fits show one bar over the epochs instead, its count and metrics updated at most
every ``every_s`` seconds and after the final epoch.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class RunProgressBar(RichProgressBar):
    def __init__(self, every_s: float = 0.25) -> None:
        super().__init__(leave=False)
        self.every_s = every_s
        self._shown = -math.inf

    @staticmethod
    def _fused(pl_module: L.LightningModule) -> bool:
        return bool(getattr(pl_module, "fused_epochs", False))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._fused(pl_module):
            super().on_train_epoch_start(trainer, pl_module)
            return
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is not None:
            return
        total = trainer.max_epochs if trainer.max_epochs is not None else math.inf
        self.train_progress_bar_id = self._add_task(total, "Epochs")
        self._update(self.train_progress_bar_id, trainer.current_epoch)  # a resumed fit's start

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._fused(pl_module):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._fused(pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            return
        now = time.monotonic()
        final = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if now - self._shown < self.every_s and not final:
            return
        self._shown = now
        self._update(self.train_progress_bar_id, trainer.current_epoch + 1)
        self._update_metrics(trainer, pl_module)
