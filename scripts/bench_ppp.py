"""PPP's wall-time saving, measured: the same N `hpmkd train` jobs one at a time, then at once.

Every mode goes through hpmkd.parallel.run_jobs, each job a fresh spawned process running the CLI
in-process, so interpreter start-up and imports count alike everywhere. Modes: sequential, one
worker that may use every core; sequential-1t, the same with one thread (a control: small models
often train faster single-threaded, a gain that is not concurrency's); concurrent, one
single-threaded worker per core, or one worker per GPU when there are GPUs. An untimed one-epoch
job first warms the file cache. Prints wall time per mode, the sum of job times (process start to
end), the mean in-process training time (results.json train_time_s) and each mode's wall time /
concurrent's.

    python scripts/bench_ppp.py                            # 4 x mlp_small on digits, 20 epochs
    python scripts/bench_ppp.py --data letter --epochs 10  # needs ../shared/data
    python scripts/bench_ppp.py --quick                    # 2 jobs, 2 epochs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpmkd.parallel import Job, JobResult, run_jobs


def train_job(run_dir: str, overrides: list[str]) -> float:
    """`hpmkd train <overrides>` in this process; returns the run's training time in seconds."""
    from hpmkd.cli import main

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    log = Path(run_dir) / "output.log"
    code: int | str | None = 0
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(["train", *overrides, f"hydra.run.dir={run_dir}"])
        except SystemExit as stop:  # main() always exits, 0 on success
            code = stop.code
    if code:
        raise RuntimeError(f"hpmkd train exited with {code}; see {log}")
    return json.loads((Path(run_dir) / "results.json").read_text())["train_time_s"]


def make_jobs(root: Path, args: argparse.Namespace, epochs: int | None = None) -> list[Job]:
    overrides = [
        f"data={args.data}",
        f"recipe.epochs={epochs or args.epochs}",
        "trainer.enable_progress_bar=false",
    ]
    return [
        Job(f"seed{i}", train_job, (str(root / str(i)), [*overrides, f"seed={i}"]))
        for i in range(args.jobs)
    ]


def measure(jobs: list[Job], workers: int, threads: int) -> tuple[float, list[JobResult]]:
    start = time.perf_counter()
    results = run_jobs(jobs, workers=workers, threads_per_worker=threads)
    wall = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit("\n".join(f"{r.name}: {r.error}" for r in failed))
    return wall, results


def machine() -> tuple[int, int, str]:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = torch.cuda.device_count()
    name = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "no GPU"
    return cores or 1, gpus, name


def modes(cores: int, gpus: int, workers: int | None) -> dict[str, tuple[int, int]]:
    """Mode name -> (workers, threads per worker)."""
    concurrent = workers or gpus or cores
    if gpus:
        concurrent = min(concurrent, gpus)
    found = {"sequential": (1, cores)}
    # Control: one thread per job without concurrency, which separates the gain of running
    # jobs at once from that of sparing small models a second intra-op thread.
    if cores > 1:
        found["sequential-1t"] = (1, 1)
    found["concurrent"] = (concurrent, max(1, cores // concurrent))
    return found


Row = tuple[float, float, float]  # wall s, sum of job s, mean train s


def run_modes(
    args: argparse.Namespace, plan: dict[str, tuple[int, int]], cores: int
) -> dict[str, list[Row]]:
    """Each mode's measurements, the modes interleaved within each repeat."""
    rows: dict[str, list[Row]] = {mode: [] for mode in plan}
    with tempfile.TemporaryDirectory(prefix="bench_ppp_") as tmp:
        measure(make_jobs(Path(tmp) / "warmup", args, epochs=1)[:1], 1, cores)
        for repeat in range(args.repeats):
            for i, (mode, (workers, threads)) in enumerate(plan.items()):
                wall, results = measure(
                    make_jobs(Path(tmp) / f"{repeat}-{i}", args), workers, threads
                )
                job_sum = sum(r.seconds for r in results)
                rows[mode].append((wall, job_sum, statistics.mean(r.value for r in results)))
    return rows


def print_report(
    args: argparse.Namespace,
    plan: dict[str, tuple[int, int]],
    rows: dict[str, list[Row]],
    where: str,
) -> None:
    title = f"PPP: {args.jobs} x plain {args.data}, {args.epochs} epochs"
    table = Table(title=title + (f", median of {args.repeats}" if args.repeats > 1 else ""))
    for column in ("mode", "workers", "threads", "wall s", "sum job s", "mean train s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    walls = {}
    for mode, (workers, threads) in plan.items():
        wall, job_sum, train = (statistics.median(col) for col in zip(*rows[mode], strict=True))
        walls[mode] = wall
        table.add_row(
            mode, str(workers), str(threads), f"{wall:.1f}", f"{job_sum:.1f}", f"{train:.1f}"
        )
    console = Console()
    console.print(table)
    for baseline in (mode for mode in plan if mode != "concurrent"):
        ratio = walls[baseline] / walls["concurrent"]
        console.print(f"{baseline} / concurrent = {ratio:.2f}x (wall time {1 / ratio - 1:+.0%})")
    console.print(f"machine: {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="number of training jobs (seeds)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data", default="digits", help="a data config, e.g. digits or letter")
    parser.add_argument("--workers", type=int, default=None, help="concurrent workers")
    parser.add_argument("--repeats", type=int, default=1, help="median over repeats")
    parser.add_argument("--quick", action="store_true", help="2 jobs of 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.epochs = 2, 2
    cores, gpus, gpu_name = machine()
    plan = modes(cores, gpus, args.workers)
    rows = run_modes(args, plan, cores)
    print_report(args, plan, rows, f"{cores} CPU cores, {gpu_name}")


if __name__ == "__main__":
    main()
