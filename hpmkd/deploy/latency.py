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


def measure(
    run: Callable[[Any], Any],
    one: Any,
    batch: Any,
    batch_size: int,
    *,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    device: str = "cpu",
) -> dict[str, float]:
    """``p50_ms``/``p95_ms`` of a batch of one and ``throughput`` (samples/s, from the median
    time of a batch of ``batch_size``)."""
    single = timings(run, one, repeats=repeats, warmup=warmup, device=device)
    few = {"repeats": max(5, repeats // 5), "warmup": max(2, warmup // 5)}
    big = timings(run, batch, **few, device=device)
    return {
        "p50_ms": float(np.percentile(single, 50) * 1e3),
        "p95_ms": float(np.percentile(single, 95) * 1e3),
        "throughput": float(batch_size / np.median(big)),
        "batch": batch_size,
    }


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
