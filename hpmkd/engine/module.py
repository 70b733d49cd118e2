"""The one LightningModule behind every run: a student, a method, and optional frozen teachers.

Plain training is the ``ce`` method with no teacher; distillation adds a teacher whose outputs
(and tapped features) feed the method. The flow of a step reads straight down: augmented batch ->
teacher outputs (no grad) -> student outputs -> named loss terms -> their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from hpmkd.data.augment import BatchTransform
from hpmkd.engine.direct_step import direct_step, direct_zero_grad
from hpmkd.engine.fused import EpochBatches, Validation, correct_top_k, skip_loader_seed
from hpmkd.engine.perf import channels_last_input
from hpmkd.engine.teacher_cache import CachedTeacher, ViewCache
from hpmkd.methods.base import DistillMethod, ModelOutputs
from hpmkd.models import FeatureTap

Batch = tuple[Tensor, Tensor, Tensor]


class FrozenTeacher:
    """A teacher kept outside the LightningModule's submodules.

    Not registered as a child, so it is never in the optimiser, never saved in the student's
    checkpoint and never switched back to train mode by ``module.train()``: BatchNorm keeps its
    running statistics and dropout stays off. Its feature hooks exist from the first call until
    ``release()``.
    """

    def __init__(self, model: nn.Module, features: tuple[str, ...] = ()) -> None:
        self.model = model.eval().requires_grad_(False)
        self.features = features
        self.tap: FeatureTap | None = None

    def to(self, device: torch.device) -> FrozenTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor, index: Tensor, view: Tensor | None = None) -> ModelOutputs:
        """The teacher's outputs for batch ``x`` (``view``, which identifies its samples for
        ``CachedTeacher`` with ``index``, is not needed online)."""
        if self.tap is None:
            self.tap = FeatureTap(self.model, self.features)
        # a model with ``indexed`` looks rows up by sample (a scikit-learn teacher's soft labels)
        indexed = getattr(self.model, "indexed", None)
        logits = self.model(x) if indexed is None else indexed(x, index)
        return ModelOutputs(logits, dict(self.tap.features))

    def release(self) -> None:
        """Remove the feature hooks (the model may be trained or pickled later)."""
        if self.tap is not None:
            self.tap.remove()
            self.tap = None


class DistillModule(L.LightningModule):
    """Trains ``student`` with ``method``; ``teacher`` is required when the method needs one.

    With ``init_stage`` the step uses the method's initialisation losses and optimises only
    ``method.init_parameters`` (the connector warm-up of AB, FT and FSP).

    ``hparams`` (the run's resolved config and the fit, ``engine/hparams.py``) are logged to
    every logger when the fit starts and saved in every checkpoint.

    Feature hooks are added at the first step and removed when a trainer is done with the module:
    hooks are closures, which spawned DDP workers could not unpickle, and a trained student may
    become the teacher of a later fit.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        method: DistillMethod,
        transform: BatchTransform,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        teacher: nn.Module | None = None,
        init_stage: bool = False,
        teacher_cache: ViewCache | None = None,
        channels_last: bool = False,
        hparams: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if hparams is not None:
            self.save_hyperparameters(dict(hparams))
        if method.needs_teacher and teacher is None:
            raise ValueError(f"method '{method.name}' needs a teacher")
        self.student = student
        self.method = method
        self.transform = transform
        self.channels_last = channels_last  # image batches in NHWC (conf/perf)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.init_stage = init_stage
        self.teacher: FrozenTeacher | CachedTeacher | None = None
        if teacher is not None:
            online = FrozenTeacher(teacher, method.teacher_features)
            # teacher_cache: logits per (sample, view) from the shared cache, misses computed online
            self.teacher = online if teacher_cache is None else CachedTeacher(online, teacher_cache)
        self.student_tap: FeatureTap | None = None
        self.fused_epochs = False  # set by fit: the train loader yields one EpochBatches per epoch
        self.direct_steps = False
        self._epoch_sums: dict[str, Tensor] = {}
        self._step_terms: list[tuple[dict[str, Tensor], int]] = []  # not yet in _epoch_sums
        self._loss_terms: set[str] = set()
        self._epoch_samples = 0
        top5 = num_classes > 10
        sync = {"distributed_available_fn": self._several_ranks}
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", **sync)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", **sync)
        self.val_acc5 = (
            MulticlassAccuracy(num_classes, top_k=5, average="micro", **sync) if top5 else None
        )
        self.test_acc5 = (
            MulticlassAccuracy(num_classes, top_k=5, average="micro", **sync) if top5 else None
        )

    def _several_ranks(self) -> bool:
        """Whether the attached trainer runs several processes: then metric states and epoch sums
        are gathered over them. Checked per trainer, not by torch.distributed being initialised:
        a one-device fit on one rank of a torchrun job must not wait for the other ranks."""
        return self._trainer is not None and self._trainer.world_size > 1

    def on_fit_start(self) -> None:
        # the strategy has moved the module to its device by now (it has not yet in `setup`)
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_train_epoch_start(self) -> None:
        self.method.epoch = self.current_epoch
        self.method.on_epoch_start(self.student)

    def teardown(self, stage: str) -> None:
        if self.student_tap is not None:
            self.student_tap.remove()
            self.student_tap = None
        if self.teacher is not None:
            self.teacher.release()

    def student_outputs(self, x: Tensor) -> ModelOutputs:
        if self.student_tap is None:
            self.student_tap = FeatureTap(self.student, self.method.student_features)
        logits = self.student(x)
        return ModelOutputs(logits, dict(self.student_tap.features))

    def memory_format(self, x: Tensor) -> Tensor:
        """The transformed batch in the memory format the models run fastest in."""
        return channels_last_input(x) if self.channels_last else x

    def use_fused_epochs(self, on: bool, direct: bool = False) -> None:
        """The fused epoch loop (``engine/fused.py``, manual optimisation) or Lightning's own;
        ``direct``: backward and optimiser step without Lightning's per-step hooks (no callback
        and no precision plugin needs them)."""
        self.fused_epochs = on
        self.direct_steps = on and direct
        self.automatic_optimization = not on

    def training_step(self, batch: Batch | EpochBatches, batch_idx: int) -> Tensor | None:
        if isinstance(batch, EpochBatches):
            return self._fused_epoch(batch)
        return self._step(batch)

    def _fused_epoch(self, epoch: EpochBatches) -> None:
        """Every batch of the epoch, stepped as Lightning's automatic optimisation would; then
        the validation Lightning's loop would run after them."""
        optimizer = self.optimizers()
        inner, step = optimizer.optimizer, self._step
        if self.direct_steps:  # torch.optim's own calls without their per-call wrappers
            zero_grad, optimizer_step = direct_zero_grad(inner), direct_step(inner) or inner.step
        steps = 0
        for batch in epoch.batches():
            steps += 1
            loss = step(batch)
            if self.direct_steps:
                zero_grad()
                loss.backward()
                optimizer._on_before_step()  # Lightning's step count (global_step)
                optimizer_step()
                optimizer._on_after_step()
            else:
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
        # Lightning counts this epoch as one batch; its loggers' step counts batches
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += steps - 1
        if epoch.validation is not None:
            self._validate_in_step(epoch.validation)

    def _validate_in_step(self, split: Validation) -> None:
        """Top-1 (and top-5) accuracy of the student on ``split``, in eval mode, logged as the
        validation loop logs them."""
        skip_loader_seed()
        modes = [(m, m.training) for m in self.student.modules()]
        self.student.eval()
        correct = torch.zeros((), dtype=torch.long, device=split.y.device)
        correct5 = torch.zeros_like(correct)
        with torch.no_grad():
            for start in range(0, len(split.y), split.batch_size):
                x = split.x[start : start + split.batch_size]
                y = split.y[start : start + split.batch_size]
                logits = self.student(self.memory_format(self.transform(x, train=False)))
                correct += correct_top_k(logits, y, 1)
                if self.val_acc5 is not None:
                    correct5 += correct_top_k(logits, y, 5)
        for module, training in modes:
            module.training = training
        total = float(len(split.y))
        self.log("val/acc", correct / total, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=1)  # fmt: skip
        if self.val_acc5 is not None:
            self.log("val/acc_top5", correct5 / total, on_step=False, on_epoch=True, batch_size=1)

    def _step(self, batch: Batch) -> Tensor:
        x, y, index = batch
        x, view = self.transform.augment(x)
        x = self.memory_format(x)
        teacher = self.teacher(x, index, view) if self.teacher is not None else None
        loss_fn = self.method.init_forward if self.init_stage else self.method
        losses = loss_fn(self.student_outputs(x), teacher, y, index)
        terms = list(losses.values())
        loss = terms[0] if len(terms) == 1 else torch.stack(terms).sum()
        self._loss_terms.update(losses)
        self._accumulate({**losses, "loss": loss, **self.method.step_metrics()}, len(y))
        return loss

    def _accumulate(self, terms: dict[str, Tensor], batch_size: int) -> None:
        """Keep the step's loss terms; summed on the device when the epoch's means are read
        (``self.log`` per step, or even one sum per step, costs a small model's step dearly)."""
        self._step_terms.append(({k: v.detach() for k, v in terms.items()}, batch_size))
        self._epoch_samples += batch_size

    def _fold_steps(self) -> None:
        """Add the kept steps' terms, weighted by their batch sizes, to the epoch sums."""
        values: dict[str, list[Tensor]] = {}
        weights: dict[str, list[int]] = {}
        for terms, batch_size in self._step_terms:
            for term, value in terms.items():
                values.setdefault(term, []).append(value.float())
                weights.setdefault(term, []).append(batch_size)
        for term, kept in values.items():
            n = torch.tensor(weights[term], dtype=torch.float32, device=kept[0].device)
            total = torch.dot(torch.stack(kept), n)
            self._epoch_sums[term] = self._epoch_sums.get(term, 0.0) + total
        self._step_terms = []

    def epoch_means(self) -> dict[str, Tensor]:
        """Sample-weighted means of this epoch's loss terms and metrics so far (over all ranks:
        schedules that read them, like MTS, must choose the same on every rank)."""
        self._fold_steps()
        if not self._epoch_samples:
            return {}
        terms = list(self._epoch_sums)
        count = torch.tensor(float(self._epoch_samples), device=self.device)
        totals = torch.stack([*(self._epoch_sums[term].float() for term in terms), count])
        if self._several_ranks():
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return {term: totals[k] / totals[-1] for k, term in enumerate(terms)}

    def epoch_loss_terms(self) -> dict[str, float]:
        """This epoch's mean of each named loss term of the method (no total, no metrics)."""
        means = self.epoch_means()
        return {term: float(means[term]) for term in self._loss_terms if term in means}

    def on_train_epoch_end(self) -> None:
        if self.fused_epochs and (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()  # manual optimisation: Lightning steps no scheduler itself
        means = self.epoch_means()
        if len(self._loss_terms) == 1:  # the one term is the loss: logged once, as train/loss
            means.pop(next(iter(self._loss_terms)), None)
        for term, mean in means.items():
            self.log(f"train/{term}", mean, prog_bar=term == "loss")
        self._epoch_sums, self._step_terms, self._epoch_samples = {}, [], 0

    def _evaluate(self, batch: Batch, split: str) -> None:
        x, y, _ = batch
        logits = self.student(self.memory_format(self.transform(x, train=False)))
        acc = self.val_acc if split == "val" else self.test_acc
        acc5 = self.val_acc5 if split == "val" else self.test_acc5
        acc.update(logits, y)
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=split == "val")
        if acc5 is not None:
            acc5.update(logits, y)
            self.log(f"{split}/acc_top5", acc5, on_step=False, on_epoch=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict:
        if self.init_stage:
            params = self.method.init_parameters(self.student)
        else:
            params = list(self.student.parameters()) + list(self.method.parameters())
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
