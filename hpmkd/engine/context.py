"""What a strategy works with: the run's config, data and store, and one training (a fit) of a
model with a method, under the run's recipe, trainer, loggers and performance switches."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from hpmkd.data.augment import BatchTransform, batch_transform
from hpmkd.data.loader import head, make_datamodule, split_size
from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits
from hpmkd.engine.callbacks import user_callbacks
from hpmkd.engine.ddp import is_global_zero, launched_rank
from hpmkd.engine.fit import FitResult, fit, fit_init_stage, one_device
from hpmkd.engine.hparams import fit_hparams
from hpmkd.engine.journal import Journal, JournalEpochs
from hpmkd.engine.model_config import model_params
from hpmkd.engine.module import DistillModule
from hpmkd.engine.packed import PACKED_CHECKPOINT
from hpmkd.engine.perf import (
    CompiledForward,
    PerfSwitches,
    channels_last_model,
    has_conv2d,
    resolve_perf,
)
from hpmkd.engine.teacher_cache import (
    CacheCounts,
    ViewCache,
    cache_summary,
    open_view_cache,
    stream_cache_off,
    weights_digest,
)
from hpmkd.errors import UserError
from hpmkd.hpm.temperature import schedule_from_config
from hpmkd.io import write_atomic
from hpmkd.methods import DistillMethod, MethodSetup, build_method
from hpmkd.models import FeatureTap, build_model
from hpmkd.parallel import DEVICE_ENV
from hpmkd.store import ArtifactStore

log = logging.getLogger("hpmkd")

STUDENT_FILE = "student.pt"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def init_seed(seed: int, role: str) -> int:
    """The seed of a model's initial weights: the run's (or the model's own) seed and its role.

    Every candidate of the run's student (``student``, ``student_direct``, ``student_link2``)
    starts from the same weights, so a chain's direct student is the KD student of the same seed.
    """
    kind = role.partition("_")[0]
    return int.from_bytes(hashlib.sha256(f"{seed}:{kind}".encode()).digest()[:4], "little")


@dataclass(frozen=True)
class TrainingChoice:
    """Settings a strategy chose for every fit of a context in place of the configured ones
    (HPM-KD's ACM): the optimiser's lr, the epochs and the temperature schedule (a
    ``conf/temperature`` node, None for a constant temperature). The run's config is left as
    written; ``RunContext.recipe`` and ``RunContext.temperature`` apply the choice."""

    lr: float
    epochs: int
    temperature: DictConfig | None = None


@dataclass
class RunContext:
    cfg: DictConfig
    out_dir: Path
    data: DataSplits | StreamSplits
    store: ArtifactStore
    ckpt_path: str | None = None  # a checkpoint from outside any run directory: the main fit's
    teacher_cache_counts: dict[str, int] = field(default_factory=dict)  # over all fits of the run
    journal: Journal | None = None
    units: list[dict[str, Any]] = field(default_factory=list)  # every model the run obtained
    choice: TrainingChoice | None = None
    # models passed as instances (the Python API), by the ``arch`` their config node names
    given: Mapping[str, nn.Module] = field(default_factory=dict)
    given_method: DistillMethod | None = None  # a method instance for the run's student

    @cached_property
    def recipe(self) -> DictConfig:
        """The recipe every fit uses: the configured one, with the choice's lr and epochs (what
        interpolates them, such as a cosine schedule's ``T_max``, follows)."""
        if self.choice is None:
            return self.cfg.recipe
        scope = self.cfg.copy()
        with open_dict(scope):
            scope.recipe.optimizer.lr = self.choice.lr
            scope.recipe.epochs = self.choice.epochs
        return scope.recipe

    @property
    def temperature(self) -> DictConfig | None:
        """The temperature schedule every fit uses (None: the method's constant temperature)."""
        if self.choice is None:
            return self.cfg.get("temperature")
        return self.choice.temperature

    @property
    def resuming(self) -> bool:
        """Continuing an interrupted run in its own directory: every fit starts from its unit's
        ``checkpoints/last.ckpt`` when there is one."""
        return bool(self.cfg.get("resume"))

    @property
    def transform(self) -> BatchTransform:
        return batch_transform(self.data, bool(self.recipe.augment))

    @property
    def device(self) -> torch.device:
        wants_gpu = self.cfg.trainer.accelerator in ("auto", "gpu", "cuda")
        return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")

    @cached_property
    def perf(self) -> PerfSwitches:
        """The performance switches (``conf/perf``, ``trainer.precision``) for this device."""
        precision = self.cfg.trainer.get("precision")
        student = self.cfg.get("student")
        conv = student is not None and has_conv2d(self._build(student))
        optimizer = self.cfg.recipe.get("optimizer")
        return resolve_perf(
            self.cfg.get("perf") or {}, precision, self.device, conv=conv, optimizer=optimizer
        )

    def build(self, model_cfg: Mapping[str, Any], role: str = "student") -> nn.Module:
        """``model_cfg`` with initial weights from ``init_seed`` (the global RNG is untouched)."""
        model = self._build(model_cfg, role)
        return channels_last_model(model) if self.perf.channels_last else model

    def _build(self, model_cfg: Mapping[str, Any], role: str = "student") -> nn.Module:
        if model_cfg["arch"] in self.given:  # a fresh copy of the instance, its weights as given
            return copy.deepcopy(self.given[model_cfg["arch"]])
        seed = model_cfg.get("seed")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(self.cfg.seed if seed is None else seed, role))
            return build_model(
                model_cfg["arch"],
                num_classes=self.data.num_classes,
                input_shape=tuple(self.data.input_shape),
                **model_params(model_cfg),
            )

    def datamodule(self) -> L.LightningDataModule:
        recipe = self.recipe
        return make_datamodule(
            self.data, recipe.batch_size, recipe.eval_batch_size,
            device_data=self.perf.device_data, augment=bool(recipe.augment),
            workers=self.cfg.data.get("workers"),
        )  # fmt: skip

    def trainer_kwargs(self, *, nested: bool) -> dict[str, Any]:
        """The run's trainer settings, on one device where a fit must not use DDP.

        A parallel-pipeline job owns one device. When a launcher (torchrun, srun) started the
        ranks, every rank runs the whole run and a model it needs first (``nested``) is trained
        under the store lock: the rank holding the lock trains it alone on its own device while
        the others wait, then reuse it from the store.
        """
        kwargs: dict[str, Any] = OmegaConf.to_container(self.cfg.trainer, resolve=True)  # type: ignore[assignment]
        if "precision" in kwargs:
            kwargs["precision"] = self.perf.precision  # `auto` resolved for the device
        if slot := os.environ.get(DEVICE_ENV):
            return one_device(kwargs, torch.device(slot))
        rank = launched_rank() if nested else None
        if rank is None:
            return kwargs
        device = self.device
        if device.type == "cuda":
            device = torch.device("cuda", rank.local_rank())
        return one_device(kwargs, device)

    def loggers(self, out_dir: Path | None = None) -> list[Logger]:
        """The configured loggers for the run itself; a plain CSV logger for nested fits."""
        if out_dir is not None:
            return [CSVLogger(save_dir=str(out_dir), name="csv", version="")]
        return [hydra.utils.instantiate(node) for node in (self.cfg.logger or {}).values()]

    def train(
        self,
        model: nn.Module,
        method: DistillMethod,
        *,
        out_dir: Path,
        teacher: nn.Module | None = None,
        teacher_id: Any = None,
        nested: bool = False,
        ckpt_path: str | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> FitResult:
        """Fit ``model`` with ``method`` (and ``teacher``) under the run's recipe and trainer.

        ``teacher_id`` (what identifies the teacher in the store) enables the prediction cache.
        """
        prepare_method(self, model, method, teacher)
        recipe = self.recipe
        trainer_kwargs = self.trainer_kwargs(nested=nested)
        ckpt_path = ckpt_path or self.unit_checkpoint(out_dir)
        unit = self.unit_name(out_dir)
        cache = self.teacher_cache(teacher, teacher_id, method)
        counts = CacheCounts() if cache is not None else None

        def module(init_stage: bool) -> DistillModule:
            scheduler = recipe.scheduler if recipe.scheduler and not init_stage else None
            settings = {"lr": method.init_lr} if init_stage and method.init_lr else {}
            if self.perf.fused_optimizer and "fused" not in recipe.optimizer:
                settings["fused"] = True
            return DistillModule(
                student=model,
                method=method,
                transform=self.transform,
                num_classes=self.data.num_classes,
                optimizer=hydra.utils.instantiate(recipe.optimizer, **settings),
                scheduler=hydra.utils.instantiate(scheduler) if scheduler else None,
                teacher=teacher,
                init_stage=init_stage,
                teacher_cache=None if init_stage else cache,
                channels_last=self.perf.channels_last and has_conv2d(model),
                hparams=fit_hparams(self.cfg, unit, self.data, self.choice),
            )

        if method.init_epochs and ckpt_path is None:
            log.info("%s: %d-epoch initialisation stage", method.name, method.init_epochs)
            fit_init_stage(
                module(init_stage=True),
                self.datamodule(),
                out_dir=out_dir / "init_stage",
                epochs=method.init_epochs,
                trainer_kwargs=trainer_kwargs,
                ckpt_path=self.unit_checkpoint(out_dir / "init_stage"),
                callbacks=self.journal_callbacks(f"{unit}/init_stage"),
                checkpoint_every_s=self.cfg.checkpoint_every_s,
            )
        schedule = schedule_from_config(self.temperature, recipe.epochs)
        if schedule is not None and hasattr(method, "temperature"):
            callbacks = [*callbacks, schedule]
        if counts is not None:
            callbacks = [*callbacks, counts]
        if self.perf.compile:
            callbacks = [*callbacks, CompiledForward(cuda_graphs=self.perf.cuda_graphs)]
        if not nested:  # teachers and links are shared through the store: not cut short
            callbacks = [*user_callbacks(self.cfg), *callbacks]
        callbacks = [*callbacks, *self.journal_callbacks(unit)]
        if ckpt_path:
            log.info("%s: resuming from %s", unit, ckpt_path)
            self.keep_metrics(out_dir)
        result = fit(
            module(init_stage=False),
            self.datamodule(),
            out_dir=out_dir,
            epochs=recipe.epochs,
            trainer_kwargs=trainer_kwargs,
            loggers=self.loggers(out_dir if nested else None),
            ckpt_path=ckpt_path,
            callbacks=callbacks,
            checkpoint_every_s=self.cfg.checkpoint_every_s,
        )
        if counts is not None:
            self.add_cache_counts(counts.counts)
        # the deployable student: its own weights only, no method connectors
        if not nested and is_global_zero():
            write_atomic(out_dir / STUDENT_FILE, lambda tmp: torch.save(model.state_dict(), tmp))
        return result

    def unit_checkpoint(self, out_dir: Path) -> str | None:
        """The checkpoint an interrupted fit in ``out_dir`` left, when this run resumes: its
        ``last.ckpt``, or a packed member's ``packed_last.ckpt``."""
        if not self.resuming:
            return None
        found = [out_dir / name for name in (LAST_CHECKPOINT, PACKED_CHECKPOINT)]
        return next((str(path) for path in found if path.is_file()), None)

    def keep_metrics(self, out_dir: Path) -> None:
        """Lightning's CSV logger deletes an existing metrics.csv: keep the interrupted
        process's epochs beside it."""
        metrics = out_dir / "csv" / "metrics.csv"
        if metrics.is_file():
            segment = self.journal.segment if self.journal is not None else "resumed"
            metrics.rename(metrics.with_name(f"metrics.before-segment{segment}.csv"))

    def unit_name(self, out_dir: Path) -> str:
        """A fit's name in the journal: its directory within the run (``student`` for the run's
        own directory)."""
        try:
            relative = out_dir.resolve().relative_to(self.out_dir.resolve())
        except ValueError:
            return str(out_dir)
        return str(relative) if relative.parts else "student"

    def journal_callbacks(self, unit: str) -> list[Callback]:
        return [JournalEpochs(self.journal, unit)] if self.journal is not None else []

    def record_unit(
        self, role: str, arch: str, source: str, fit: FitResult | dict[str, Any] | None
    ) -> None:
        """Note a model the run obtained: trained here, or taken from the store or a checkpoint.

        A model this run trained in an earlier process and stored before it was interrupted is
        reused from the store now, and still counts as trained by the run."""
        train_time = (fit.train_time_s if isinstance(fit, FitResult) else (fit or {}).get(
            "train_time_s"))  # fmt: skip
        trained = source == "trained" or (
            source == "store" and self.journal is not None and self.journal.trained(role)
        )
        unit = {"role": role, "arch": arch, "source": source, "trained_by_run": trained,
                "train_time_s": train_time if trained else 0.0}  # fmt: skip
        self.units.append(unit)
        if self.journal is not None and not trained:
            self.journal.write("unit", unit=role, source=source)

    def teacher_cache(
        self, teacher: nn.Module | None, teacher_id: Any, method: DistillMethod
    ) -> ViewCache | None:
        """The shared cache of the teacher's logits per (sample, view), when reading it is exact:
        a known teacher and a method that reads its logits only (``teacher_cache=false``: never)."""
        if teacher is None or teacher_id is None or method.teacher_features:
            return None
        if not self.cfg.get("teacher_cache", True):
            return None
        off = stream_cache_off(self.data, bool(self.recipe.augment))
        if off is not None:
            log.info("teacher cache off: %s", off)
            return None
        transform = self.transform
        spec = {
            "teacher": teacher_id,
            "weights": weights_digest(teacher),
            "data": self.data.fingerprint(),
            "transform": transform.spec,
            "precision": self.perf.precision,
        }
        return open_view_cache(
            self.store, spec, samples=split_size(self.data, "train"), views=transform.views,
            classes=self.data.num_classes,
        )  # fmt: skip

    def add_cache_counts(self, counts: dict[str, int]) -> None:
        """Log one fit's cache hits and misses and add them to the run's."""
        summary = cache_summary(counts)
        saved = summary["saved_fraction"]
        log.info(
            "teacher cache: %d hits, %d misses (%s of teacher forwards saved)",
            summary["hits"], summary["misses"], "-" if saved is None else f"{100 * saved:.1f}%",
        )  # fmt: skip
        for name, count in counts.items():
            self.teacher_cache_counts[name] = self.teacher_cache_counts.get(name, 0) + count

    def train_plain(self, model: nn.Module, *, out_dir: Path, nested: bool = False) -> FitResult:
        return self.train(model, build_method({"name": "ce"}), out_dir=out_dir, nested=nested)

    def train_student(self, model: nn.Module, method: DistillMethod, **kwargs: Any) -> FitResult:
        """The run's own student: fitted in the run directory, resumed like any unit."""
        result = self.train(model, method, out_dir=self.out_dir, ckpt_path=self.ckpt_path, **kwargs)
        self.record_unit("student", self.cfg.student.arch, "trained", result)
        return result

    def seed(self, seed: int | None = None) -> None:
        L.seed_everything(self.cfg.seed if seed is None else seed, workers=True, verbose=False)


@torch.no_grad()
def prepare_method(
    ctx: RunContext, student: nn.Module, method: DistillMethod, teacher: nn.Module | None
) -> None:
    """Resolve the method's feature names, then a dry forward on two samples: class counts must
    agree, and the method sizes its connectors from the feature shapes."""
    method.bind_features(student, teacher)
    x = ctx.transform(head(ctx.data, 2), train=False)
    was_training = student.training
    student.eval()
    with FeatureTap(student, method.student_features) as tap:
        logits = student(x)
        student_shapes = {k: v.shape for k, v in tap.features.items()}
    student.train(was_training)
    teacher_shapes: dict[str, torch.Size] = {}
    if teacher is not None:
        teacher.eval()
        with FeatureTap(teacher, method.teacher_features) as tap:
            teacher_logits = teacher(x)
            teacher_shapes = {k: v.shape for k, v in tap.features.items()}
        if teacher_logits.shape[1] != logits.shape[1]:
            raise UserError(
                f"teacher predicts {teacher_logits.shape[1]} classes but the student predicts "
                f"{logits.shape[1]} (data '{ctx.data.name}' has {ctx.data.num_classes})"
            )
    method.setup(
        MethodSetup(
            student_shapes=student_shapes,
            teacher_shapes=teacher_shapes,
            num_classes=ctx.data.num_classes,
            num_train=split_size(ctx.data, "train"),
        )
    )
