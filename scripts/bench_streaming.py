"""The streaming data path, measured in one invocation: speed against a plain torchvision loop,
and peak memory against the number of images.

speed: the same KD job (teacher forward under no_grad, student forward and backward, SGD; fp32,
contiguous tensors in both) fed by
- plain:  torchvision ImageFolder + DataLoader with a transforms.v2 pipeline on PIL images that
          ends in ToDtype(float32) + Normalize in the workers (the usual tutorial loop);
- hpmkd:  hpmkd's streaming source and StreamDataModule (torchvision.io decode, the same
          augmentation on uint8 in the workers, normalised in the training process) under the
          DistillModule and Trainer `hpmkd train` builds.
Both with the same number of workers (hpmkd's auto choice for this machine's CPUs), each
measurement in a fresh process, setups interleaved (A B A B), median of the repeats. Two jobs:
the CIFAR-10 JPEG folder at 32 px (ResNet-20 -> ResNet-8; ../shared/data, skipped when absent)
and a generated ImageNet-layout folder of variable-size JPEGs at 224 px (torchvision ResNet-18
-> MobileNetV2, RandomResizedCrop 224 + flip).

rss: peak resident memory of a fresh process that streams one epoch of a generated folder of
small JPEGs through the loader (2 workers), for each size; the largest of the process and its
workers (getrusage RUSAGE_CHILDREN in a parent made for that size alone).

    uv run python scripts/bench_streaming.py speed [--quick]
    uv run python scripts/bench_streaming.py rss --sizes 10000 100000
    git archive <commit> | tar -x -C /tmp/before
    uv run python scripts/bench_streaming.py in-memory --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from machine import cpu_name  # noqa: E402

SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "CIFAR-10-images.tar.gz"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_EVAL = [{"Resize": {"size": 256}}, {"CenterCrop": {"size": 224}}]
TEMPERATURE = 4.0
JOBS = {
    "cifar32": {"teacher": "resnet20", "student": "resnet8", "batch": 128, "size": 32},
    "gen224": {
        "teacher": "torchvision.models.resnet18",
        "student": "torchvision.models.mobilenet_v2",
        "batch": 16,
        "size": 224,
    },
}
SETUPS = ("plain", "hpmkd")


# --- data --------------------------------------------------------------------------------------


def cifar_folder(cache: Path) -> Path | None:
    root = cache / "CIFAR-10-images"
    if not (root / "train").is_dir():
        if not SHARED_CIFAR.is_file():
            return None
        with tarfile.open(SHARED_CIFAR) as archive:
            archive.extractall(root, filter="data")
    return root


def generated_folder(root: Path, classes: int, per_class: int, side: tuple[int, int]) -> Path:
    """ImageNet layout (train/<class>, val/<class>) of smooth random JPEGs, sides in ``side``."""
    from PIL import Image

    if (root / "val").is_dir():
        return root
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(1, per_class // 10))):
        for c in range(classes):
            folder = root / split / f"n{c:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(side[0], side[1] + 1, 2))
                low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                image = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
                image.save(folder / f"{c}_{i}.JPEG", quality=85)
    return root


# --- the KD job ----------------------------------------------------------------------------------


def models(job: dict, classes: int) -> tuple[nn.Module, nn.Module]:
    from hpmkd.models import build_model

    torch.manual_seed(0)
    shape = (3, job["size"], job["size"])
    teacher = build_model(job["teacher"], num_classes=classes, input_shape=shape)
    student = build_model(job["student"], num_classes=classes, input_shape=shape)
    return teacher.eval().requires_grad_(False), student


def sgd(params: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, y: Tensor) -> Tensor:
    log_p = F.log_softmax(student_logits / TEMPERATURE, dim=1)
    kl = F.kl_div(log_p, F.softmax(teacher_logits / TEMPERATURE, dim=1), reduction="batchmean")
    return 0.1 * F.cross_entropy(student_logits, y) + 0.9 * TEMPERATURE**2 * kl


def workers_for(job: dict, samples: int) -> int:
    from hpmkd.data.stream_loader import auto_workers

    return auto_workers(samples, job["batch"])


def train_transforms(job: dict) -> list:
    if job["size"] == 32:
        return [{"RandomCrop": {"size": 32, "padding": 4}}, "RandomHorizontalFlip"]
    return [{"RandomResizedCrop": {"size": job["size"]}}, "RandomHorizontalFlip"]


class Timer:
    def __init__(self, warmup: int) -> None:
        self.warmup, self.step, self.start, self.end = warmup, 0, 0.0, 0.0

    def tick(self) -> None:
        if self.step == self.warmup:
            self.start = time.perf_counter()
        self.step += 1
        self.end = time.perf_counter()


def run_plain(job: dict, train_dir: Path, steps: int, warmup: int) -> float:
    from torchvision import datasets
    from torchvision.transforms import v2

    from hpmkd.data.stream_transforms import build_transforms

    mean, std = (CIFAR_MEAN, CIFAR_STD) if job["size"] == 32 else (IMAGENET_MEAN, IMAGENET_STD)
    pipeline = v2.Compose([
        v2.ToImage(), *build_transforms(train_transforms(job), "plain"),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
    ])  # fmt: skip
    dataset = datasets.ImageFolder(str(train_dir), transform=pipeline)
    workers = workers_for(job, len(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=job["batch"], shuffle=True, num_workers=workers,
        persistent_workers=True, drop_last=True,
    )  # fmt: skip
    teacher, student = models(job, len(dataset.classes))
    optimizer = sgd(student.parameters())
    timer = Timer(warmup)
    batches = iter(loader)
    for _ in range(warmup + steps):
        timer.tick()
        x, y = next(batches)
        with torch.no_grad():
            t = teacher(x)
        loss = kd_loss(student(x), t, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    timer.tick()
    return steps * job["batch"] / (timer.end - timer.start)


def hpmkd_data(job: dict, root: Path) -> object:
    from hpmkd.data import load_data

    common = {"root": str(root), "val_fraction": 0.0, "split_seed": 0, "stream": True}
    transforms = {"train": train_transforms(job), "eval": []}
    if job["size"] == 32:
        return load_data(common | {
            "name": "image_folder", "normalize": {"mean": CIFAR_MEAN, "std": CIFAR_STD},
            "augment": {"crop_padding": 4, "flip": True}, "transforms": transforms,
        })  # fmt: skip
    return load_data(common | {
        "name": "imagenet", "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "transforms": transforms | {"eval": IMAGENET_EVAL},
    })  # fmt: skip


def run_hpmkd(job: dict, root: Path, steps: int, warmup: int) -> float:
    from lightning.pytorch.callbacks import Callback

    from hpmkd.data.augment import batch_transform
    from hpmkd.data.stream_loader import StreamDataModule
    from hpmkd.engine.fit import make_trainer, quiet_lightning
    from hpmkd.engine.module import DistillModule
    from hpmkd.methods import build_method

    quiet_lightning()
    data = hpmkd_data(job, root)
    teacher, student = models(job, data.num_classes)
    module = DistillModule(
        student=student, method=build_method({"name": "kd"}),
        transform=batch_transform(data, augment=True), num_classes=data.num_classes,
        optimizer=sgd, teacher=teacher,
    )  # fmt: skip
    timer = Timer(warmup)

    class Tick(Callback):
        def on_train_batch_start(self, *_: object) -> None:
            timer.tick()

        def on_train_end(self, *_: object) -> None:
            timer.tick()

    workers = workers_for(job, len(data.train))
    with tempfile.TemporaryDirectory() as out:
        trainer, _ = make_trainer(
            out_dir=Path(out), epochs=1, has_val=False, callbacks=[Tick()],
            trainer_kwargs={
                "accelerator": "cpu", "devices": 1, "enable_model_summary": False,
                "precision": "32-true", "limit_train_batches": warmup + steps,
            },
        )  # fmt: skip
        datamodule = StreamDataModule(data, job["batch"], job["batch"], workers)
        trainer.fit(module, datamodule=datamodule)
    return steps * job["batch"] / (timer.end - timer.start)


def one_speed(args: argparse.Namespace) -> None:
    job = JOBS[args.job]
    root = Path(args.root)
    train_dir = root / "train"
    rate = (run_plain(job, train_dir, args.steps, args.warmup) if args.one == "plain"
            else run_hpmkd(job, root, args.steps, args.warmup))  # fmt: skip
    print(json.dumps({"images_per_s": rate}))


def speed(args: argparse.Namespace) -> None:
    cache = Path(tempfile.gettempdir()) / "hpmkd-bench-streaming"
    roots = {
        "cifar32": cifar_folder(cache),
        "gen224": generated_folder(cache / "gen224", 10, 64, (200, 400)),
    }
    steps = {"cifar32": (5, 30), "gen224": (1, 4)} if args.quick else {
        "cifar32": (10, 60), "gen224": (2, 8)}  # fmt: skip
    for name, root in roots.items():
        if root is None:
            print(f"{name}: skipped ({SHARED_CIFAR} absent)")
            continue
        warmup, count = steps[name]
        job = JOBS[name]
        rates: dict[str, list[float]] = {s: [] for s in SETUPS}
        for _ in range(args.repeats):
            for setup in SETUPS:  # interleaved: A B A B
                command = [
                    sys.executable,
                    __file__,
                    "one-speed",
                    "--one",
                    setup,
                    "--job",
                    name,
                    "--root",
                    str(root),
                    "--steps",
                    str(count),
                    "--warmup",
                    str(warmup),
                ]
                done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if done.returncode:
                    raise SystemExit(f"{setup} {name} failed:\n{done.stderr[-3000:]}")
                rates[setup].append(
                    json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]
                )
        median = {s: statistics.median(v) for s, v in rates.items()}
        workers = workers_for(job, 10**6)
        print(
            f"{name}: {job['teacher']} -> {job['student']}, batch {job['batch']}, {count} timed "
            f"steps, {workers} workers each, median of {args.repeats}: plain "
            f"{median['plain']:.1f} img/s, hpmkd {median['hpmkd']:.1f} img/s, hpmkd / plain "
            f"{median['hpmkd'] / median['plain']:.2f}x  (runs: {rates})"
        )


# --- memory ------------------------------------------------------------------------------------


def rss_run(args: argparse.Namespace) -> None:
    """One epoch of the folder through the streaming loader (this process's peak to stdout)."""
    from hpmkd.data import load_data
    from hpmkd.data.augment import batch_transform
    from hpmkd.data.stream_loader import StreamDataModule

    data = load_data({
        "name": "imagenet", "root": args.root, "val_fraction": 0.0, "stream": True,
        "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "transforms": {"train": [{"RandomResizedCrop": {"size": 16}}, "RandomHorizontalFlip"],
                       "eval": []},
    })  # fmt: skip
    transform = batch_transform(data, augment=True)
    module = StreamDataModule(data, 256, 256, workers=2)
    seen = 0
    for x, _, _ in module.train_dataloader():
        transform.normalise(x)
        seen += len(x)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"images": seen, "self_kb": self_kb}))


def rss_measure(args: argparse.Namespace) -> None:
    """Run ``rss-run`` and report the largest peak among it and its workers."""
    command = [sys.executable, __file__, "rss-run", "--root", args.root]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["children_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps(report))


def rss(args: argparse.Namespace) -> None:
    cache = Path(tempfile.gettempdir()) / "hpmkd-bench-streaming"
    results = {}
    for _ in range(args.repeats):
        for size in args.sizes:  # interleaved over the repeats
            root = generated_folder(cache / f"small-{size}", 100, size // 100, (12, 24))
            command = [sys.executable, __file__, "rss-measure", "--root", str(root)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
            report = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(size, []).append(report)
            print(f"{size} images: {report}")
    peaks = {size: max(r["children_kb"] for r in runs) / 1024 for size, runs in results.items()}
    small, large = min(peaks), max(peaks)
    print(
        "peak RSS (MiB): "
        + ", ".join(f"{s} images {p:.0f}" for s, p in peaks.items())
        + f"; {large} / {small} images: {peaks[large] / peaks[small]:.3f}x"
    )


def in_memory(args: argparse.Namespace) -> None:
    """`hpmkd train` on the in-memory CIFAR JPEG path from ``--after`` (default: this tree) and
    ``--before`` (unpacked commits), fresh processes, interleaved; the fit's train_time_s."""
    root = cifar_folder(Path(tempfile.gettempdir()) / "hpmkd-bench-streaming")
    if root is None:
        raise SystemExit(f"{SHARED_CIFAR} absent")
    job = ["train", "data=cifar10_jpeg", f"data.root={root}", "student=resnet8", "recipe=smoke",
           "recipe.epochs=1", f"+trainer.limit_train_batches={args.steps or 100}",
           "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]  # fmt: skip
    trees = {"after": Path(args.after or ROOT), "before": Path(args.before)}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for repeat in range(args.repeats + 1):  # the first round only fills the decode cache
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "PYTHONPATH": str(tree), "HPMKD_CACHE": f"{tmp}/cache",
                       "HPMKD_OUTPUTS": f"{tmp}/out"}  # fmt: skip
                command = [sys.executable, "-m", "hpmkd.cli", *job]
                done = subprocess.run(command, capture_output=True, text=True, cwd=tree, env=env)
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
                (found,) = Path(tmp, "out").rglob("results.json")
                seconds = json.loads(found.read_text())["train_time_s"]
            if repeat:
                times[name].append(seconds)
                print(f"repeat {repeat}: {name} train_time_s {seconds:.1f}")
    median = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"in-memory CIFAR JPEG, resnet8, {args.steps or 100} steps of batch 128, median of "
        f"{args.repeats}: before {median['before']:.1f} s, after {median['after']:.1f} s, "
        f"after / before {median['after'] / median['before']:.3f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=["speed", "rss", "in-memory", "one-speed", "rss-run", "rss-measure"]
    )
    parser.add_argument("--before", help="in-memory: an unpacked tree of the earlier commit")
    parser.add_argument("--after", help="in-memory: the later tree (default: this one)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    if args.what in ("speed", "rss", "in-memory"):
        print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; figures are ratios "
              "measured in this one invocation")  # fmt: skip
    {"speed": speed, "rss": rss, "in-memory": in_memory, "one-speed": one_speed,
     "rss-run": rss_run, "rss-measure": rss_measure}[args.what](args)  # fmt: skip


if __name__ == "__main__":
    main()
