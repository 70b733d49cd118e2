"""Timing a forward: warm-up, then repeats; p50/p95 at batch 1 and throughput at a larger batch."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

WARMUP = 10
REPEATS = 50
ROUNDS = 4


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timings(
    run: Callable[[Any], Any], x: Any, *, repeats: int, warmup: int, device: str = "cpu"
) -> np.ndarray:
    """Seconds per call of ``run(x)``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run(x)
    _synchronise(device)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        run(x)
        _synchronise(device)
        times[i] = time.perf_counter() - start
    return times


def summary(single: np.ndarray, batched: np.ndarray, batch_size: int) -> dict[str, float]:
    """``p50_ms``/``p95_ms`` of the batch-of-one times and ``throughput`` (samples/s, from the
    median time of a batch of ``batch_size``)."""
    return {
        "p50_ms": float(np.percentile(single, 50) * 1e3),
        "p95_ms": float(np.percentile(single, 95) * 1e3),
        "throughput": float(batch_size / np.median(batched)),
        "batch": batch_size,
    }


def measure_interleaved(
    runs: list[Callable[[Any], Any]],
    one: Any,
    batch: Any,
    batch_size: int,
    *,
    repeats: int = REPEATS,
    rounds: int = ROUNDS,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """``summary`` of each function, timed A B A B: ``rounds`` rounds, each timing every
    function in turn (``repeats / rounds`` calls at batch 1, a fifth as many at the batch)."""
    for run in runs:
        timings(run, one, repeats=0, warmup=WARMUP, device=device)
        timings(run, batch, repeats=0, warmup=2, device=device)
    per_round = max(1, repeats // rounds)
    single: list[list[np.ndarray]] = [[] for _ in runs]
    batched: list[list[np.ndarray]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            single[i].append(timings(run, one, repeats=per_round, warmup=1, device=device))
            few = max(2, per_round // 5)
            batched[i].append(timings(run, batch, repeats=few, warmup=1, device=device))
    return [
        summary(np.concatenate(s), np.concatenate(b), batch_size)
        for s, b in zip(single, batched, strict=True)
    ]


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), or what the platform module knows: bench records
    name the machine their figures hold for."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
