"""One Lightning fit + test of a ``DistillModule``, returning the accuracies a run reports."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from hpmkd.data.loader import SplitsDataModule, split_size
from hpmkd.engine.checkpoints import fit_checkpoints
from hpmkd.engine.fused import FusedEpochs, direct_steps, fused_refusal, fused_trainer
from hpmkd.engine.module import DistillModule
from hpmkd.engine.packed import PACKED_CHECKPOINT, FitRequest, current_member
from hpmkd.engine.progress import RunProgressBar
from hpmkd.errors import UserError

log = logging.getLogger("hpmkd")

# Trainer arguments that spread a fit over several processes
DISTRIBUTED_KEYS = ("strategy", "devices", "num_nodes", "sync_batchnorm")


def quiet_lightning() -> None:
    """Keep Lightning's banners and tips out of the console; warnings still show."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # In-memory tensor batches need no worker processes, and metrics are logged per epoch.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # frozen models inside a method (SMSKD's reference) are in eval mode on purpose
    warnings.filterwarnings(
        "ignore", message=".*module\\(s\\) in eval mode at the start of training.*"
    )
    # Lightning's own use of a deprecated torch pytree API, nothing a user can act on
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
    # DDP: the module all-reduces its epoch means itself before logging them
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")
    # DDP: the one-device test after the fit loads weights only, no callback states
    warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")


class EpochHistory(Callback):
    """Per-epoch curves: validation top-1 (%), the epoch means of the training loss terms and
    method metrics, and the method's temperature when it has one; and the training time so far.
    Checkpointed, so a resumed fit keeps its history and counts the time of every process that
    trained it (up to its last checkpoint)."""

    reads_step_validation = True  # the fused loop's ``val/acc``, logged in its training step

    def __init__(self) -> None:
        self.val_acc: list[float] = []
        self.curves: dict[str, list[float | None]] = {}
        self.earlier_train_s = 0.0  # training time of the processes before a resume
        self.start_epoch = 0
        self._started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self.start_epoch = trainer.current_epoch

    def train_time_s(self) -> float:
        """Training time over every process that trained this fit, this one up to now."""
        now = 0.0 if self._started is None else time.perf_counter() - self._started
        return self.earlier_train_s + now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = {k: float(v) for k, v in pl_module.epoch_means().items()}  # type: ignore[operator]
        temperature = getattr(pl_module.method, "temperature", None)  # type: ignore[attr-defined]
        if temperature is not None:
            values["temperature"] = float(temperature)
        epoch = trainer.current_epoch
        for name, value in values.items():
            curve = self.curves.setdefault(name, [])
            del curve[epoch:]
            curve.extend([None] * (epoch - len(curve)))  # a term that starts later (SMSKD stage 2)
            curve.append(value)
        if not trainer.enable_validation and "val/acc" in trainer.callback_metrics:
            self._record_validation(trainer)  # the fused loop validated in its step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/acc" not in trainer.callback_metrics:
            return
        self._record_validation(trainer)

    def _record_validation(self, trainer: L.Trainer) -> None:
        self.val_acc.append(100.0 * float(trainer.callback_metrics["val/acc"]))

    def state_dict(self) -> dict[str, Any]:
        curves = {k: list(v) for k, v in self.curves.items()}
        return {
            "val_acc": list(self.val_acc),
            "curves": curves,
            "train_time_s": self.train_time_s(),
            "start_epoch": self.start_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_acc = list(state_dict["val_acc"])
        self.curves = {k: list(v) for k, v in state_dict["curves"].items()}
        self.earlier_train_s = float(state_dict.get("train_time_s", 0.0))
        self.start_epoch = int(state_dict.get("start_epoch", 0))
        self._started = None


@dataclass
class FitResult:
    """Accuracies in percent. Validation picks the best epoch; test is reported for both."""

    epochs: int
    val_history: list[float]
    test_acc_last: float
    test_acc_best: float | None
    test_acc5_last: float | None
    train_time_s: float  # summed over every process that trained it (a resumed fit's included)
    world_size: int = 1  # processes that trained (DDP ranks)
    start_epoch: int = 0  # the epoch this process started from (> 0: resumed from a checkpoint)
    curves: dict[str, list[float | None]] = field(default_factory=dict)  # per-epoch, None: absent

    @property
    def acc_last(self) -> float | None:
        return self.val_history[-1] if self.val_history else None

    @property
    def acc_best(self) -> float | None:
        return max(self.val_history) if self.val_history else None

    @property
    def best_epoch(self) -> int | None:
        if not self.val_history:
            return None
        return self.val_history.index(max(self.val_history)) + 1

    @property
    def test_acc(self) -> float:
        """The figure to report: test accuracy of the best-validation epoch (last if no val)."""
        return self.test_acc_best if self.test_acc_best is not None else self.test_acc_last


def make_trainer(
    *,
    out_dir: Path,
    epochs: int,
    trainer_kwargs: Mapping[str, Any],
    has_val: bool,
    loggers: Sequence[Logger] | bool = False,
    callbacks: Sequence[Callback] = (),
    checkpoint_every_s: float = 0.0,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer every hpmkd run uses: last + best-validation checkpoints, rich progress.

    ``checkpoints/last.ckpt`` is written by a callback of its own (``engine/checkpoints.py``),
    after an epoch once ``checkpoint_every_s`` seconds have passed since the last one (0: every
    epoch) and after the final one: Lightning's ``save_last`` writes it only in epochs that also
    saved a top-k checkpoint, so a resume would repeat every epoch since the best one.
    """
    kwargs = dict(trainer_kwargs)
    if isinstance(kwargs.get("strategy"), Mapping):  # a `_target_` node: one instance per Trainer
        kwargs["strategy"] = instantiate(kwargs["strategy"])
    show_progress = kwargs.pop("enable_progress_bar", True)
    best, last = fit_checkpoints(out_dir / "checkpoints", checkpoint_every_s, has_val)
    checkpoints: list[Callback] = [best, last] if best is not None else [last]
    # Checkpoint-like callbacks (the run journal) run after the checkpoints are written
    after = [c for c in callbacks if isinstance(c, Checkpoint)]
    before = [c for c in callbacks if not isinstance(c, Checkpoint)]
    all_callbacks: list[Callback] = [*before, *checkpoints, *after]
    if show_progress:
        all_callbacks.append(RunProgressBar())
    if not has_val:
        kwargs["limit_val_batches"] = 0
    trainer = L.Trainer(
        max_epochs=epochs,
        default_root_dir=out_dir,
        logger=list(loggers) if loggers else False,
        callbacks=all_callbacks,
        enable_progress_bar=show_progress,
        **kwargs,
    )
    return trainer, best if best is not None else last


def one_device(trainer_kwargs: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``trainer_kwargs`` for a single process on ``device``."""
    kwargs = {k: v for k, v in trainer_kwargs.items() if k not in DISTRIBUTED_KEYS}
    devices = 1 if device.index is None else [device.index]
    return kwargs | {"accelerator": device.type, "devices": devices}


def per_rank(datamodule: SplitsDataModule, world_size: int) -> SplitsDataModule:
    """``recipe.batch_size`` is the global batch: each of ``world_size`` ranks loads its share, so a
    run takes the same optimiser steps with the same learning rate on any number of devices."""
    if world_size == 1:
        return datamodule
    if datamodule.batch_size % world_size:
        raise UserError(
            f"recipe.batch_size={datamodule.batch_size} does not split over {world_size} "
            f"processes; use a multiple of {world_size}"
        )
    batch_size = datamodule.batch_size // world_size
    return datamodule.with_batch_size(batch_size)


@contextmanager
def without_nvml_probe() -> Iterator[None]:
    """Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import; on a machine without NVML,
    torch then looks for the library again at every Adam step (``torch.cuda.is_available``,
    about 0.1 ms each, more than a small model's step). Training on the CPU there probes CUDA
    the ordinary way, which finds no driver and initialises nothing."""
    name = "PYTORCH_NVML_BASED_CUDA_CHECK"
    probe = os.environ.get(name)
    if probe != "1" or nvml_available():
        yield
        return
    del os.environ[name]
    try:
        yield
    finally:
        os.environ[name] = probe


@contextmanager
def cpu_without_nvml_probe(trainer: L.Trainer) -> Iterator[None]:
    """``without_nvml_probe`` for a fit on the CPU."""
    if trainer.strategy.root_device.type != "cpu":
        yield
        return
    with without_nvml_probe():
        yield


@cache
def nvml_available() -> bool:
    return torch.cuda._device_count_nvml() >= 0


def fit_data(
    module: DistillModule, datamodule: L.LightningDataModule, trainer: L.Trainer
) -> L.LightningDataModule:
    """The data module ``trainer.fit`` gets: fused epochs where they give the same results
    (``engine/fused.py``), else ``datamodule`` with each rank's share of the batch."""
    refusal = fused_refusal(datamodule, trainer, trainer.callbacks)
    module.use_fused_epochs(refusal is None, direct_steps(trainer, module))
    if refusal is None:
        fused_trainer(trainer)
        return FusedEpochs(datamodule)  # type: ignore[arg-type]
    log.debug("per-batch loop: %s", refusal)
    return per_rank(datamodule, trainer.world_size)


def fit(
    module: DistillModule,
    datamodule: SplitsDataModule,
    *,
    out_dir: Path,
    epochs: int,
    trainer_kwargs: Mapping[str, Any],
    loggers: Sequence[Logger] | bool = False,
    ckpt_path: str | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_every_s: float = 0.0,
) -> FitResult:
    """Train, then test with the last and the best-validation weights. The student's fit of a
    packed sweep member is handed to its pack (``engine/packed.py``) where it can be packed."""
    member = current_member()
    packed_resume = ckpt_path is not None and Path(ckpt_path).name == PACKED_CHECKPOINT.name
    in_pack = member is not None and out_dir.resolve() == member.run_dir
    if packed_resume or (in_pack and ckpt_path is None):
        from hpmkd.engine.packed_checkpoint import read_member_checkpoint
        from hpmkd.engine.packed_fit import pack_refusal, train_pack

        resume = read_member_checkpoint(ckpt_path) if ckpt_path and packed_resume else None
        request = FitRequest(
            module, datamodule, out_dir, epochs, dict(trainer_kwargs), loggers, list(callbacks),
            torch.get_rng_state(), checkpoint_every_s, resume,
        )  # fmt: skip
        refusal = pack_refusal(request)
        if in_pack and refusal is None and (packed := member.hand_over(request)) is not None:
            return packed
        if in_pack and refusal is not None:
            log.info("%s not packed, trained alone: %s", member.name, refusal)
        if packed_resume and refusal is None:  # continued as a pack of one
            return train_pack([request])[0]
        if packed_resume:
            log.info("%s cannot be continued here (%s): trained from its start", ckpt_path, refusal)
            ckpt_path = None
    has_val = split_size(datamodule.splits, "val") > 0
    history = EpochHistory()
    trainer, checkpoint = make_trainer(
        out_dir=out_dir,
        epochs=epochs,
        trainer_kwargs=trainer_kwargs,
        has_val=has_val,
        loggers=loggers,
        callbacks=[history, *callbacks],
        checkpoint_every_s=checkpoint_every_s,
    )
    with cpu_without_nvml_probe(trainer):
        trainer.fit(module, datamodule=fit_data(module, datamodule, trainer), ckpt_path=ckpt_path)
    # testing the best checkpoint restores callback states too: keep the full history first
    val_history, curves = list(history.val_acc), dict(history.curves)
    train_time, start_epoch = history.train_time_s(), history.start_epoch
    # After DDP, one process tests on its own device: every test sample counts exactly once (the
    # DistributedSampler would pad), and the weights of the best epoch end up in this process.
    tester = trainer
    if trainer.world_size > 1:
        device_kwargs = one_device(trainer_kwargs, trainer.strategy.root_device)
        tester = L.Trainer(
            **device_kwargs | {"enable_progress_bar": False},
            logger=False,
            enable_checkpointing=False,
            default_root_dir=out_dir,
        )

    def test(ckpt: str | None) -> Mapping[str, float]:
        return tester.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)[0]

    last = test(None)
    best = test(checkpoint.best_model_path) if has_val and checkpoint.best_model_path else None
    top5 = last.get("test/acc_top5")
    return FitResult(
        epochs=trainer.current_epoch,
        val_history=val_history,
        test_acc_last=100.0 * last["test/acc"],
        test_acc_best=100.0 * best["test/acc"] if best else None,
        test_acc5_last=100.0 * top5 if top5 is not None else None,
        train_time_s=train_time,
        world_size=trainer.world_size,
        start_epoch=start_epoch,
        curves=curves,
    )


def fit_init_stage(
    module: DistillModule,
    datamodule: SplitsDataModule,
    *,
    out_dir: Path,
    epochs: int,
    trainer_kwargs: Mapping[str, Any],
    ckpt_path: str | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_every_s: float = 0.0,
) -> None:
    """Train a module built with ``init_stage=True``: no validation, no test."""
    trainer, _ = make_trainer(
        out_dir=out_dir,
        epochs=epochs,
        trainer_kwargs=trainer_kwargs,
        has_val=False,
        callbacks=callbacks,
        checkpoint_every_s=checkpoint_every_s,
    )
    with cpu_without_nvml_probe(trainer):
        trainer.fit(module, datamodule=fit_data(module, datamodule, trainer), ckpt_path=ckpt_path)
