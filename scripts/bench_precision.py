"""fp32 against bf16 autocast on this machine: training speed and the accuracy reached.

`trainer.precision=auto` picks bf16-mixed for conv nets on a CPU with AMX (and on CUDA GPUs with
bf16). This script runs the same `hpmkd train` job (same data, seed, recipe) once per precision,
each in a fresh process, and prints the training time of each, their ratio, and the test
accuracy of each, so the switch is judged on both.

    uv run python scripts/bench_precision.py                      # KD r56 -> r20, 15 epochs
    uv run python scripts/bench_precision.py --strategy plain --epochs 5
    uv run python scripts/bench_precision.py \
        --teacher-checkpoint ../shared/data/teachers/cifar10-resnet-option-a/resnet56-4bfd9763.th \
        data.normalize.mean=[0.485,0.456,0.406] data.normalize.std=[0.229,0.224,0.225]

Arguments after the options are extra `hpmkd train` overrides, given to both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_peers import ROOT, image_folder

from hpmkd.models import build_model

PRECISIONS = ("32-true", "bf16-mixed")


def train(args: argparse.Namespace, images: Path, work: Path, precision: str) -> dict:
    """results.json of one `hpmkd train` process at ``precision``."""
    out = work / precision
    overrides = [
        "data=image_folder", f"data.root={images}", f"student={args.student}",
        "recipe=crd_cifar100", f"recipe.epochs={args.epochs}", f"trainer.precision={precision}",
        "trainer.enable_progress_bar=false", "logger=csv", f"hydra.run.dir={out}",
        f"seed={args.seed}", *args.overrides,
    ]  # fmt: skip
    if args.strategy == "kd":
        overrides += [
            "+strategy=kd", f"teacher={args.teacher}",
            f"teacher.checkpoint={args.teacher_checkpoint or work / 'teacher.pt'}",
            "teacher_cache=false",
        ]  # fmt: skip
    env = os.environ | {"HPMKD_CACHE": str(work / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "hpmkd.cli", "train", *overrides],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{precision} run failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategy", choices=("kd", "plain"), default="kd")
    parser.add_argument("--teacher", default="resnet56_a")
    parser.add_argument("--teacher-checkpoint", help="trained teacher weights (else random)")
    parser.add_argument("--student", default="resnet20_a")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--images", type=int, default=5000, help="images (10 classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra hpmkd train overrides")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console()
    cache = Path(os.environ.get("HPMKD_CACHE", Path.home() / ".cache" / "hpmkd")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = image_folder(cache, args.images)
        if args.strategy == "kd" and not args.teacher_checkpoint:
            # a random teacher: speed only, its students' accuracy means little
            torch.manual_seed(0)
            teacher = build_model(args.teacher, num_classes=10, input_shape=(3, 32, 32))
            torch.save(teacher.state_dict(), work / "teacher.pt")
        for precision in PRECISIONS:
            results[precision] = train(args, images, work, precision)
            console.log(f"{precision}: {results[precision]['train_time_s']:.1f} s training")
    fp32 = results["32-true"]
    teacher = f" ({args.teacher} teacher)" if args.strategy == "kd" else ""
    table = Table(
        title=f"{args.strategy} {args.student}{teacher}, {args.images} images x "
        f"{args.epochs} epochs, seed {args.seed}, {torch.get_num_threads()} threads"
    )
    for column in ("precision", "training s", "speed-up", "test acc %", "last val acc %"):
        table.add_column(column, justify="right")
    for precision, result in results.items():
        table.add_row(
            precision, f"{result['train_time_s']:.1f}",
            f"{fp32['train_time_s'] / result['train_time_s']:.2f}",
            f"{result['test_acc']:.2f}", _percent(result.get("val_acc")),
        )  # fmt: skip
    console.print(table)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
