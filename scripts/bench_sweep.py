"""A sweep of students sharing one teacher, with and without the teacher prediction cache.

The same `hpmkd train -m` sweep (logit-based methods x seeds, one ResNet-56 teacher given as a
checkpoint, ResNet-20 students, CIFAR-shaped images with random crop + flip) runs twice, each in
a fresh process with an empty store: once with `teacher_cache=false` (the teacher runs on every
training batch of every member) and once with `teacher_cache=true` (each (image, view) pair is
computed once and then read by every later epoch and member). Prints the total wall time of
each sweep, their ratio, and the fraction of teacher forwards the cache saved (from the
members' results.json).

The cache pays once views repeat: CIFAR's crop + flip has 162 views per image, so a member of
E epochs draws each image E times. The default (a 500-image subset, 4 members x 80 epochs)
stays below the 240-epoch recipe so it finishes in minutes on a CPU; longer runs save more.

    python scripts/bench_sweep.py                        # 4 members x 80 epochs
    python scripts/bench_sweep.py --epochs 20 --images 200   # quicker, saves less
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_peers import ROOT, image_folder

from hpmkd.models import build_model


def sweep(
    args: argparse.Namespace, images: Path, work: Path, cached: bool
) -> tuple[float, list[dict]]:
    """Wall time of one `hpmkd train -m` sweep process, and its members' results."""
    out = work / ("cached" if cached else "online")
    overrides = [
        "+strategy=kd", "data=image_folder", f"data.root={images}",
        f"teacher={args.teacher}", f"teacher.checkpoint={work / 'teacher.pt'}",
        f"student={args.student}", "recipe=crd_cifar100", f"recipe.epochs={args.epochs}",
        f"method={','.join(args.methods)}", f"seed={','.join(map(str, range(args.seeds)))}",
        f"teacher_cache={str(cached).lower()}", "trainer.enable_progress_bar=false",
        "logger=csv", f"hydra.sweep.dir={out}",
    ]  # fmt: skip
    env = os.environ | {"HPMKD_CACHE": str(out / "cache")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hpmkd.cli", "train", "-m", *overrides],
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"sweep failed:\n{done.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))]
    members = [r for r in results if r.get("status") == "completed" and r["strategy"] == "kd"]
    if len(members) != len(args.methods) * args.seeds:
        raise SystemExit(f"expected {len(args.methods) * args.seeds} members, found {len(members)}")
    return wall, members


def teacher_forwards(members: list[dict]) -> tuple[int, int]:
    """(samples the teacher ran on, samples served) summed over the members' training steps."""
    ran = served = 0
    for member in members:
        stats = member["details"]["teacher_cache"]
        ran += stats["misses"]
        served += stats["hits"] + stats["misses"]
    return ran, served


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="resnet56_a")
    parser.add_argument("--student", default="resnet20_a")
    parser.add_argument("--methods", nargs="+", default=["kd", "dist"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--images", type=int, default=500, help="training images (10 classes)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console()
    cache = Path(os.environ.get("HPMKD_CACHE", Path.home() / ".cache" / "hpmkd")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = image_folder(cache, args.images)
        torch.manual_seed(0)
        teacher = build_model(args.teacher, num_classes=10, input_shape=(3, 32, 32))
        torch.save(teacher.state_dict(), work / "teacher.pt")
        online_s, _ = sweep(args, images, work, cached=False)
        console.log(f"online teacher: {online_s:.1f} s")
        cached_s, members = sweep(args, images, work, cached=True)
        console.log(f"prediction cache: {cached_s:.1f} s")
    ran, served = teacher_forwards(members)
    table = Table(
        title=f"{len(members)} members ({', '.join(args.methods)} x {args.seeds} seeds), "
        f"{args.teacher} -> {args.student}, {args.images} images x {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads, precision {members[0]['perf']['precision']}"
    )
    for column in ("teacher", "sweep wall s", "speed-up", "teacher forwards saved"):
        table.add_column(column, justify="right")
    table.add_row("online (teacher_cache=false)", f"{online_s:.1f}", "1.00", "0 %")
    table.add_row(
        "prediction cache", f"{cached_s:.1f}", f"{online_s / cached_s:.2f}",
        f"{100 * (1 - ran / served):.1f} % ({served - ran} of {served})",
    )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
