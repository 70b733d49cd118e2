"""The same KD job run by hpmkd and by its peers, images/s measured in one invocation.

Job (PERFORMANCE.md's anchor): ResNet-56 teacher -> ResNet-20 student, 10 classes, CIFAR-shaped
images, batch 64, SGD lr 0.05 momentum 0.9 wd 5e-4, loss 0.1 * CE + 0.9 * T^2 * KL (T 4,
batchmean), random crop 32 pad 4 + horizontal flip. Every setup trains the same model classes
from the same initial weights; each measurement runs in a fresh process (warm-up steps, then
timed steps), and the setups are interleaved within each repeat so drift hits all of them alike.

Setups:
- plain:        a plain PyTorch loop in the style of the CRD benchmark code: torchvision
                ImageFolder + DataLoader with PIL transforms, teacher forward every step.
- torchdistill: torchdistill (PyPI) DistillationBox with its KDLoss, same loader and models.
- hpmkd-online: hpmkd's training path (DistillModule + the Trainer `hpmkd train` builds), the
                teacher run every step (`teacher_cache=false`), at the precision `hpmkd train`
                resolves by default on this machine (`--precision auto`: bf16-mixed for conv
                nets on a CPU with AMX, fp32 on other CPUs).
- hpmkd-online-fp32: the same in fp32, whatever the machine (the peers' precision).
- hpmkd-cached: the same with the teacher prediction cache already holding the views this run
                draws (a later run, or the later epochs of a long run, with the same teacher and
                data); hpmkd-cold is the run that filled it (every lookup a miss).

Data: a 5,000-image subset of the CIFAR-10 JPEG folder of ../shared/data when present, else
generated JPEGs (the per-step cost does not depend on how many images there are).
Before timing, the loss of hpmkd and of the plain loop on one fixed batch are compared.

    uv run --group bench python scripts/bench_peers.py            # 10 + 60 steps, median of 3
    uv run --group bench python scripts/bench_peers.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from hpmkd.data.splits import DataSplits
    from hpmkd.engine.module import DistillModule

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "CIFAR-10-images.tar.gz"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
TEMPERATURE, CE_WEIGHT, KD_WEIGHT = 4.0, 0.1, 0.9
PEERS = ("plain", "torchdistill")
HPMKD = ("hpmkd-online-fp32", "hpmkd-online", "hpmkd-cold", "hpmkd-cached")


# ---------------------------------------------------------------------------------------------
# data and models shared by every setup


def image_folder(cache: Path, images: int) -> Path:
    """A folder of ``images`` training images (and a tenth as many test images), 10 classes:
    linked from the CIFAR-10 JPEG copy (unpacked once into ``cache``) when it is there, else
    generated JPEGs. Kept in ``cache``, so hpmkd's decoded copy of it is reused too."""
    root = cache / f"{'cifar10-jpeg' if SHARED_CIFAR.is_file() else 'synthetic'}-{images}"
    if (root / "test").is_dir():
        return root
    if SHARED_CIFAR.is_file():
        full = cache / "CIFAR-10-images"
        if not (full / "train").is_dir():
            with tarfile.open(SHARED_CIFAR) as archive:  # train/ and test/ at its top
                archive.extractall(full, filter="data")
        return subset_folder(full, root, images)
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", images), ("test", max(10, images // 10))):
        for i in range(count):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy()).save(folder / f"{i:05d}.jpg", quality=75)
    return root


def subset_folder(source: Path, target: Path, train_images: int) -> Path:
    """The first ``train_images / 10`` training images of each of the 10 classes of ``source``
    (and a tenth as many test images), linked into ``target``."""
    for split, per_class in (("train", train_images // 10), ("test", max(1, train_images // 100))):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (target / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:per_class]:
                (target / split / class_dir.name / image.name).symlink_to(image)
    return target


def models(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """Teacher and student from hpmkd's zoo, the same initial weights in every process."""
    from hpmkd.models import build_model

    torch.manual_seed(0)
    teacher = build_model(args.teacher, num_classes=10, input_shape=(3, 32, 32))
    student = build_model(args.student, num_classes=10, input_shape=(3, 32, 32))
    return teacher, student


def sgd(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, y: Tensor) -> Tensor:
    """The reference formula, written out: 0.1 * CE + 0.9 * T^2 * KL(teacher || student)."""
    log_p_s = F.log_softmax(student_logits / TEMPERATURE, dim=1)
    p_t = F.softmax(teacher_logits / TEMPERATURE, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
    return CE_WEIGHT * F.cross_entropy(student_logits, y) + KD_WEIGHT * TEMPERATURE**2 * kl


def pil_loader(root: Path, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """CRD-style input pipeline: decode and augment each image with PIL every time."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])  # fmt: skip
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.peer_workers,
        drop_last=True, persistent_workers=args.peer_workers > 0,
    )  # fmt: skip


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


class Timer:
    """Wall time over the steps after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.step, self.start, self.end = warmup, 0, 0.0, 0.0

    def tick(self) -> None:
        """Call once before every step and once after the last."""
        if self.step == self.warmup:
            self.start = time.perf_counter()
        self.step += 1
        self.end = time.perf_counter()

    def images_per_s(self, steps: int, batch_size: int) -> float:
        return steps * batch_size / (self.end - self.start)


# ---------------------------------------------------------------------------------------------
# the peers


def run_plain(args: argparse.Namespace, root: Path, store: Path) -> float:
    teacher, student = models(args)
    fmt = memory_format(args)
    teacher.eval().requires_grad_(False).to(memory_format=fmt)
    student.train().to(memory_format=fmt)
    optimizer = sgd(student.parameters())
    timer = Timer(args.warmup)
    for step, (x, y) in enumerate(endless(pil_loader(root, args))):
        timer.tick()
        if step == args.warmup + args.steps:
            break
        x = x.contiguous(memory_format=fmt)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = kd_loss(student(x), teacher_logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return timer.images_per_s(args.steps, args.batch_size)


def run_torchdistill(args: argparse.Namespace, root: Path, store: Path) -> float:
    """torchdistill as its users run it: a DistillationBox built from a training config."""
    from torchdistill.core.distillation import get_distillation_box

    teacher, student = models(args)
    fmt = memory_format(args)
    # torchdistill leaves the teacher in the mode it was given (train: BatchNorm would use and
    # overwrite batch statistics, and run slower); hand it over in eval mode, as it should be
    teacher.eval().to(memory_format=fmt)
    student.to(memory_format=fmt)
    loader = pil_loader(root, args)
    kd = {
        "key": "KDLoss",
        "kwargs": {
            "student_module_path": ".", "student_module_io": "output",
            "teacher_module_path": ".", "teacher_module_io": "output",
            "temperature": TEMPERATURE, "alpha": CE_WEIGHT, "reduction": "batchmean",
        },
    }  # fmt: skip
    config = {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {
                "batch_size": args.batch_size,
                "num_workers": args.peer_workers,
                "drop_last": True,
                "persistent_workers": args.peer_workers > 0,
            },
        },  # fmt: skip
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}},
        },
    }
    box = get_distillation_box(
        teacher, student, {"train": loader.dataset}, config, torch.device("cpu"), None, False, 1
    )
    box.pre_epoch_process(epoch=0)
    timer = Timer(args.warmup)
    for step, (x, y, supp) in enumerate(endless(box.train_data_loader)):
        timer.tick()
        if step == args.warmup + args.steps:
            break
        loss = box.forward_process(x.contiguous(memory_format=fmt), y, supp)
        box.post_forward_process(loss=loss)
    return timer.images_per_s(args.steps, args.batch_size)


def endless(loader: torch.utils.data.DataLoader) -> Iterator:
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------
# hpmkd


def hpmkd_data(root: Path) -> DataSplits:
    """The folder through hpmkd's image-folder source: decoded once into a uint8 tensor."""
    from hpmkd.data import load_data

    return load_data({
        "name": "image_folder", "root": str(root), "val_fraction": 0.0, "split_seed": 0,
        "normalize": {"mean": CIFAR_MEAN, "std": CIFAR_STD},
        "augment": {"crop_padding": 4, "flip": True},
    })  # fmt: skip


def hpmkd_module(
    args: argparse.Namespace, data: DataSplits, store: Path | None, *, augment: bool = True
) -> DistillModule:
    """hpmkd's KD module as `hpmkd train +strategy=kd` builds it; ``store``: the prediction
    cache in that artifact store (None: the online teacher)."""
    from hpmkd.data.augment import BatchTransform
    from hpmkd.engine.module import DistillModule
    from hpmkd.engine.perf import channels_last_model
    from hpmkd.engine.teacher_cache import open_view_cache, weights_digest
    from hpmkd.methods import build_method
    from hpmkd.store import ArtifactStore

    teacher, student = models(args)
    if args.channels_last:
        teacher, student = channels_last_model(teacher), channels_last_model(student)
    transform = BatchTransform(
        is_image=True, mean=CIFAR_MEAN, std=CIFAR_STD, crop_padding=4 if augment else 0,
        flip=augment,
    )  # fmt: skip
    cache = None
    if store is not None:
        spec = {
            "teacher": weights_digest(teacher), "data": data.fingerprint(), **transform.spec,
            "precision": args.precision,
        }  # fmt: skip
        cache = open_view_cache(
            ArtifactStore(store), spec, samples=len(data.y_train), views=transform.views,
            classes=data.num_classes,
        )  # fmt: skip
    return DistillModule(
        student=student, method=build_method({"name": "kd"}), transform=transform,
        num_classes=data.num_classes, optimizer=sgd, teacher=teacher, teacher_cache=cache,
        channels_last=args.channels_last,
    )  # fmt: skip


def run_hpmkd(
    args: argparse.Namespace, root: Path, store: Path | None, precision: str | None = None
) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from hpmkd.data.loader import SplitsDataModule
    from hpmkd.engine.fit import make_trainer, quiet_lightning

    quiet_lightning()
    data = hpmkd_data(root)
    L.seed_everything(0, verbose=False)  # the cold and the cached run draw the same batches
    module = hpmkd_module(args, data, store)
    timer = Timer(args.warmup)

    class Tick(Callback):
        def on_train_batch_start(self, *_: object) -> None:
            timer.tick()

        def on_train_end(self, *_: object) -> None:
            timer.tick()

    with tempfile.TemporaryDirectory() as out:
        trainer, _ = make_trainer(
            out_dir=Path(out), epochs=1, has_val=False, callbacks=[Tick()],
            trainer_kwargs={
                "accelerator": "cpu", "devices": 1, "enable_model_summary": False,
                "precision": precision or args.precision,
                "limit_train_batches": args.warmup + args.steps, "log_every_n_steps": 50,
            },
        )  # fmt: skip
        trainer.fit(module, datamodule=SplitsDataModule(data, args.batch_size, 512))
    return timer.images_per_s(args.steps, args.batch_size)


def check_same_loss(args: argparse.Namespace, root: Path, store: Path) -> float:
    """hpmkd's training-step loss on one fixed batch (online, then a cache miss, then a cache
    hit) against the plain loop's formula; returns the largest relative difference."""
    data = hpmkd_data(root)
    x, y = data.x_train[: args.batch_size], data.y_train[: args.batch_size]
    batch = (x, y, torch.arange(len(y)))
    online = hpmkd_module(args, data, None, augment=False)
    cached = hpmkd_module(args, data, store, augment=False)
    teacher, student = models(args)
    teacher.eval()
    normalised = online.transform(x, train=False)
    with torch.no_grad():
        reference = kd_loss(student(normalised), teacher(normalised), y)
        losses = [online.training_step(batch, 0)]
        losses += [cached.training_step(batch, 0) for _ in range(2)]  # miss, then hit
    worst = max(float(abs(loss - reference) / reference) for loss in losses)
    if worst > 1e-3:  # fp16 storage of the cached logits; online agrees to float rounding
        raise SystemExit(f"loss mismatch: hpmkd {[float(v) for v in losses]} vs {float(reference)}")
    return worst


SETUPS: dict[str, Callable[[argparse.Namespace, Path, Path], float]] = {
    "plain": run_plain,
    "torchdistill": run_torchdistill,
    "hpmkd-online-fp32": lambda args, root, store: run_hpmkd(args, root, None, "32-true"),
    "hpmkd-online": lambda args, root, store: run_hpmkd(args, root, None),
    "hpmkd-cold": run_hpmkd,  # fills this repeat's cache
    "hpmkd-cached": run_hpmkd,  # the same draws again: every lookup a hit
}


# ---------------------------------------------------------------------------------------------
# the driver


def measure(setup: str, args: argparse.Namespace, root: Path, store: Path) -> float:
    """Images/s of ``setup`` in a fresh process."""
    command = [
        sys.executable, __file__, "--one", setup, "--root", str(root), "--store", str(store),
        *sys.argv[1:],
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{setup} failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="resnet56_a")
    parser.add_argument("--student", default="resnet20_a")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=5000, help="training images")
    parser.add_argument("--peer-workers", type=int, default=0, help="DataLoader workers of peers")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument(
        "--precision", default="auto", help="hpmkd's trainer.precision (auto: as `hpmkd train`)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps, one repeat, one process (<1 min)"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps, args.repeats = 3, 15, 1
    from hpmkd.engine.perf import resolve_perf

    args.precision = resolve_perf({}, args.precision, torch.device("cpu"), conv=True).precision
    if args.one:
        rate = SETUPS[args.one](args, Path(args.root), Path(args.store))
        print(json.dumps({"images_per_s": rate}))
        return
    report(args)


def report(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cache = Path(os.environ.get("HPMKD_CACHE", Path.home() / ".cache" / "hpmkd")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    root = image_folder(cache, args.images)
    with tempfile.TemporaryDirectory() as store:
        worst = check_same_loss(args, root, Path(store))
    console.log(f"same loss on a fixed batch: hpmkd vs plain loop, max rel. diff {worst:.1e}")
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as store:  # each repeat fills its own cache
            for name in SETUPS:
                if args.quick:  # one process for all: no interpreter start per setup
                    rates[name].append(SETUPS[name](args, root, Path(store)))
                else:
                    rates[name].append(measure(name, args, root, Path(store)))
                console.log(f"repeat {repeat + 1}: {name} {rates[name][-1]:.1f} img/s")
    median = {name: statistics.median(values) for name, values in rates.items()}
    faster_peer = max(PEERS, key=median.__getitem__)
    table = Table(
        title=f"KD {args.teacher} -> {args.student}, batch {args.batch_size}, {args.steps} "
        f"timed steps, median of {args.repeats}, {torch.get_num_threads()} threads, "
        f"channels_last={args.channels_last}, hpmkd precision {args.precision}, data: {root.name}"
    )
    for column in ("setup", "img/s", f"/ {faster_peer}"):
        table.add_column(column, justify="right")
    for name, rate in median.items():
        table.add_row(name, f"{rate:.1f}", f"{rate / median[faster_peer]:.2f}")
    console.print(table)
    cached, online = (median[n] / median[faster_peer] for n in ("hpmkd-cached", "hpmkd-online"))
    print(
        f"hpmkd / {faster_peer} (the faster peer): {cached:.2f}x with the prediction cache, "
        f"{online:.2f}x with the online teacher"
    )


if __name__ == "__main__":
    main()
