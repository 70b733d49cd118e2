"""Training throughput of hpmkd's Lightning loop against a plain hand-written PyTorch loop.

Same model, data (in-memory uint8 CIFAR-shaped batches), batch size, optimiser, augmentation
(random crop pad 4 + flip, done batch-wise by the same kernels) and loss on both sides, so the
ratio measures what the framework adds per step: Lightning's loop, hooks, logging, metrics and
the progress bar. Measured for plain CE training (student alone) and for online KD (teacher
forward every step). Prints images/s per setup and the ratio hpmkd / plain loop.

    python scripts/bench_loop.py                       # ResNet-56 -> ResNet-20, batch 64
    python scripts/bench_loop.py --steps 20 --repeats 1  # quicker
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table

from hpmkd.data.augment import BatchTransform
from hpmkd.data.loader import SplitsDataModule
from hpmkd.data.splits import DataSplits
from hpmkd.engine.fit import make_trainer, quiet_lightning
from hpmkd.engine.module import DistillModule
from hpmkd.methods import build_method
from hpmkd.methods.functional import tempered_kl
from hpmkd.models import build_model

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def make_data(n: int, classes: int) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    empty_x, empty_y = x[:0], y[:0]
    return DataSplits(
        name="synthetic_cifar",
        x_train=x,
        y_train=y,
        x_val=empty_x,
        y_val=empty_y,
        x_test=x[:64],
        y_test=y[:64],
        num_classes=classes,
        class_names=[str(c) for c in range(classes)],
        input_shape=(3, 32, 32),
        is_image=True,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        augment={"crop_padding": 4, "flip": True},
    )


def make_models(
    args: argparse.Namespace, kd: bool
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    torch.manual_seed(0)
    student = build_model(args.student, num_classes=args.classes, input_shape=(3, 32, 32))
    teacher = (
        build_model(args.teacher, num_classes=args.classes, input_shape=(3, 32, 32)) if kd else None
    )
    return student, teacher


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def plain_loop(args: argparse.Namespace, data: DataSplits, kd: bool) -> float:
    """The hand-written baseline: index, augment, forward, loss, backward, step."""
    student, teacher = make_models(args, kd)
    student.train()
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    transform = BatchTransform(
        is_image=True, mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4, flip=True
    )
    optimizer = sgd(student.parameters())
    order = torch.randperm(len(data.y_train))
    b = args.batch_size
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        idx = order[step * b : (step + 1) * b]
        x = transform(data.x_train[idx], train=True)
        y = data.y_train[idx]
        logits = student(x)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * tempered_kl(logits, teacher_logits, 4.0)
        else:
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return args.steps * b / (time.perf_counter() - start)


class StepTimer(Callback):
    """Wall time from the first timed step's start to the last step's end."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def hpmkd_loop(args: argparse.Namespace, data: DataSplits, kd: bool) -> float:
    """hpmkd's own path: DistillModule + the Trainer `hpmkd train` builds (progress bar on)."""
    student, teacher = make_models(args, kd)
    method = build_method({"name": "kd"} if kd else {"name": "ce"})
    module = DistillModule(
        student=student,
        method=method,
        num_classes=args.classes,
        optimizer=sgd,
        teacher=teacher,
        transform=BatchTransform(
            is_image=True, mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4, flip=True
        ),
    )
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        trainer, _ = make_trainer(
            out_dir=Path(out),
            epochs=1,
            has_val=False,
            callbacks=[timer],
            trainer_kwargs={
                "accelerator": "cpu",
                "devices": 1,
                "enable_model_summary": False,
                "limit_train_batches": args.warmup + args.steps,
                "enable_checkpointing": True,
                "enable_progress_bar": args.progress_bar,
                "log_every_n_steps": 50,
            },
        )
        trainer.fit(module, datamodule=SplitsDataModule(data, args.batch_size, 256))
    return args.steps * args.batch_size / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-progress-bar", dest="progress_bar", action="store_false")
    args = parser.parse_args()
    quiet_lightning()
    L.seed_everything(0, verbose=False)
    data = make_data((args.warmup + args.steps) * args.batch_size, args.classes)

    table = Table(
        title=f"loop throughput, {args.teacher} -> {args.student}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for column in ("job", "plain loop img/s", "hpmkd img/s", "hpmkd / plain"):
        table.add_column(column, justify="right")
    for kd in (False, True):
        plain, ours = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
            plain.append(plain_loop(args, data, kd))
            ours.append(hpmkd_loop(args, data, kd))
        p, h = statistics.median(plain), statistics.median(ours)
        table.add_row("KD" if kd else "CE", f"{p:.1f}", f"{h:.1f}", f"{h / p:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
