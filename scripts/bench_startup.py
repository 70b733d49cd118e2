"""CLI start-up time: `hpmkd train --help`, `--cfg job`, a config error and `hpmkd --version`,
each as the ratio of its wall time to `python -c pass` measured in the same run.

    uv run python scripts/bench_startup.py [--repeats 5]

Runs the installed entry point of this interpreter's environment (no `uv run` in the timing).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name

HPMKD = str(Path(sys.executable).parent / "hpmkd")
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "hpmkd --version": [HPMKD, "--version"],
    "hpmkd train --help": [HPMKD, "train", "--help"],
    "hpmkd train +strategy=kd --cfg job": [HPMKD, "train", "+strategy=kd", "--cfg", "job"],
    "hpmkd train recipe.epochs=-1 (error)": [HPMKD, "train", "recipe.epochs=-1"],
    "hpmkd train student=nope (error)": [HPMKD, "train", "student=nope"],
}


def _time(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HPMKD_CACHE": tmp, "HPMKD_OUTPUTS": tmp}
        for command in CASES.values():  # warm the page cache and bytecode first
            _time(command, env)
        times = {name: [_time(c, env) for _ in range(opts.repeats)] for name, c in CASES.items()}
    base = statistics.median(times["python -c pass"])
    print(f"{'command':40} {'median s':>9} {'min s':>7} {'x python':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:40} {median:9.2f} {min(values):7.2f} {median / base:9.1f}")


if __name__ == "__main__":
    main()
