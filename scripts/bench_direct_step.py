"""The direct fused Adam step (``engine/direct_step.py``) against ``optimizer.step()``.

Per-call microseconds of ``Adam(fused=True).step()`` (with a CosineAnnealingLR attached, as in
training: its counting wrapper is part of the call) and of ``direct_step``, and of
``zero_grad()`` and ``direct_zero_grad``, for mlp_small's parameters and for 8 members'
parameters stacked (``torch.func.stack_module_state``). Gradients are fixed random tensors;
zero-grad times are less the cost of putting the gradients back. Setups interleaved, minimum of
the repeats.

    python scripts/bench_direct_step.py
    python scripts/bench_direct_step.py --calls 500 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

    import torch
    from machine import cpu_name

    from hpmkd.engine.direct_step import direct_step, direct_zero_grad
    from hpmkd.models import build_model

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"cpu: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    def mlp() -> torch.nn.Module:
        return build_model("mlp_small", num_classes=26, input_shape=(16,))

    torch.manual_seed(0)
    setups = {
        "mlp_small": list(mlp().parameters()),
        "mlp_small x8 stacked": list(
            torch.func.stack_module_state([mlp() for _ in range(8)])[0].values()
        ),
    }

    def per_call_us(fn: Callable[[], None], before: Callable[[], None] | None = None) -> float:
        started = time.perf_counter()
        if before is None:
            for _ in range(args.calls):
                fn()
        else:
            for _ in range(args.calls):
                before()
                fn()
        return (time.perf_counter() - started) / args.calls * 1e6

    print("| parameters | step us | direct step us | step / direct | zero_grad us |", end="")
    print(" direct zero_grad us | zero_grad / direct |")
    print("|---|---|---|---|---|---|---|")
    for name, params in setups.items():
        grads = [torch.randn_like(p) for p in params]
        pairs = list(zip(params, grads, strict=True))

        def put_grads(pairs: list = pairs) -> None:
            for p, g in pairs:
                p.grad = g

        put_grads()
        optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        step, zero = direct_step(optimizer), direct_zero_grad(optimizer)
        assert step is not None
        step()  # the first call creates the state through optimizer.step()
        runs: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {
            "step": (optimizer.step, None),
            "direct step": (step, None),
            "zero_grad": (optimizer.zero_grad, put_grads),
            "direct zero_grad": (zero, put_grads),
            "put grads": (put_grads, None),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for key, (fn, before) in runs.items():
                put_grads()
                times[key].append(per_call_us(fn, before))
        best = {k: min(v) for k, v in times.items()}
        for key in ("zero_grad", "direct zero_grad"):
            best[key] -= best["put grads"]
        s, ds, z, dz = (best[k] for k in ("step", "direct step", "zero_grad", "direct zero_grad"))
        print(
            f"| {name} ({sum(p.numel() for p in params)}) | {s:.1f} | {ds:.1f} | {s / ds:.2f}x",
            end="",
        )
        print(f" | {z:.2f} | {dz:.2f} | {z / dz:.2f}x |")


if __name__ == "__main__":
    main()
