"""Latency of a run's exported fp32 files against their int8 versions (hpmkd export --quantize),
timed in turn (A B A B) in one process: batch-1 p50 and throughput at --batch.

    python scripts/bench_int8.py <export dir> [--threads 1] [--batch 256] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hpmkd.deploy.export import loader
from hpmkd.deploy.latency import cpu_name, measure_interleaved
from hpmkd.deploy.wrapper import example_inputs

PAIRS = {
    "onnx": ("student.onnx", "student.int8.onnx"),
    "torchscript": ("student.ts", "student.int8.ts"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=200)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    out = Path(opts.export_dir)
    contract = json.loads((out.parent / "deploy.json").read_text())
    files = [
        (fmt, name) for fmt, names in PAIRS.items() for name in names if (out / name).is_file()
    ]
    runs = [loader(fmt, out / name, opts.threads) for fmt, name in files]
    one, many = example_inputs(contract, 1), example_inputs(contract, opts.batch, seed=1)
    timed = measure_interleaved(runs, one, many, opts.batch, repeats=opts.repeats)
    print(f"{cpu_name()}, {opts.threads} threads, torch {torch.__version__}")
    for (_, name), t in zip(files, timed, strict=True):
        print(
            f"{name:20s} p50 {t['p50_ms']:.4f} ms  p95 {t['p95_ms']:.4f} ms  "
            f"{t['throughput']:,.0f} samples/s @{opts.batch}"
        )


if __name__ == "__main__":
    main()
