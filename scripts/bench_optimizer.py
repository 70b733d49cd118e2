"""Fused optimiser kernels (``perf.fused_optimizer``) against torch's default per-parameter loop.

Training epochs of an MLP on random letter-shaped data (14,400 rows, 16 features, 26 classes,
batch 256: 57 steps), one optimiser step per batch, for Adam, AdamW and SGD (momentum 0.9) with
``fused=True`` and without, setups interleaved; prints ms per epoch and default / fused.

    python scripts/bench_optimizer.py                 # mlp_small and mlp_large, 3 repeats
    python scripts/bench_optimizer.py --epochs 2 --repeats 1
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    import torch
    import torch.nn.functional as F
    from machine import cpu_name

    from hpmkd.models import build_model

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"cpu: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(14400, 16, generator=g), torch.randint(0, 26, (14400,), generator=g)
    optimizers = {
        "Adam": functools.partial(torch.optim.Adam, lr=1e-3),
        "AdamW": functools.partial(torch.optim.AdamW, lr=1e-3),
        "SGD": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    }

    def epoch_ms(arch: str, make: functools.partial, fused: bool) -> float:
        torch.manual_seed(0)
        model = build_model(arch, num_classes=26, input_shape=(16,))
        optimizer = make(model.parameters(), fused=fused)
        started = time.perf_counter()
        for _ in range(args.epochs):
            for index in torch.randperm(len(y)).split(256):
                loss = F.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return (time.perf_counter() - started) / args.epochs * 1000

    print("| model | optimiser | default ms/epoch | fused ms/epoch | default / fused |")
    print("|---|---|---|---|---|")
    for arch in ("mlp_small", "mlp_large"):
        for name, make in optimizers.items():
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for fused in (False, True):
                    times[fused].append(epoch_ms(arch, make, fused))
            default, fused = (statistics.median(times[k]) for k in (False, True))
            print(f"| {arch} | {name} | {default:.1f} | {fused:.1f} | {default / fused:.2f}x |")


if __name__ == "__main__":
    main()
