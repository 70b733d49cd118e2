"""Where a small model's epoch goes in hpmkd: per-epoch phases against a plain loop.

``hpmkd.fit`` of mlp_small on letter (``/work/shared/data/tabular``) with timers around the fused
epoch (steps and in-step validation), the validation alone, the checkpoint writes, the module's
and the history's epoch-end hooks, and the train loader's item; beside a plain PyTorch loop doing
the same epochs, batches, validation and best-model save with torch's default Adam. Each
configuration is fitted ``--repeats`` times, interleaved; the minimum per epoch is printed.

    python scripts/profile_small.py                                  # hpmkd's defaults
    python scripts/profile_small.py "nobar=trainer.enable_progress_bar=false"
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="name=override,override (beside 'hpmkd=')")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = tempfile.mkdtemp(prefix="profile_small-")
    os.environ["HPMKD_CACHE"], os.environ["HPMKD_OUTPUTS"] = f"{work}/cache", f"{work}/outputs"

    import torch
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
    from machine import cpu_name

    import hpmkd
    from hpmkd.api import compose
    from hpmkd.data import load_data
    from hpmkd.engine.fit import EpochHistory, quiet_lightning
    from hpmkd.engine.module import DistillModule
    from hpmkd.models import build_model

    quiet_lightning()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"cpu: {cpu_name()}; torch threads {torch.get_num_threads()}; {args.epochs} epochs")
    common = [f"paths.shared_data={args.data}", "trainer=cpu", f"recipe.epochs={args.epochs}"]
    data = load_data(compose(["data=letter", *common]).data)
    spent: dict[str, float] = {}

    def timed(owner: type, name: str, key: str, when: Callable[..., bool] | None = None) -> None:
        inner = getattr(owner, name, None)
        if inner is None:  # a phase this version of hpmkd does not have
            return

        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                if when is None or when(*a):
                    spent[key] = spent.get(key, 0.0) + time.perf_counter() - started

        setattr(owner, name, wrapper)

    def fitting(loop: _EvaluationLoop) -> bool:
        return loop.trainer.state.fn == "fit"

    timed(_EvaluationLoop, "run", "Lightning's validation loop", fitting)
    timed(DistillModule, "_fused_epoch", "steps+validation")
    timed(DistillModule, "_validate_in_step", "validation")
    timed(DistillModule, "on_train_epoch_end", "module epoch end")
    timed(EpochHistory, "on_train_epoch_end", "history")
    timed(ModelCheckpoint, "_save_checkpoint", "checkpoint files")

    def plain() -> dict[str, float]:
        nvml = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        torch.manual_seed(0)
        model = build_model("mlp_small", num_classes=26, input_shape=(16,))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
        best = -1.0
        started = time.perf_counter()
        for _ in range(args.epochs):
            model.train()
            for index in torch.randperm(len(data.y_train)).split(256):
                loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            schedule.step()
            model.eval()
            with torch.no_grad():
                acc = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
            if acc > best:
                best = acc
                torch.save(model.state_dict(), f"{work}/best.pt")
        if nvml is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = nvml
        return {"total": time.perf_counter() - started}

    def fitted(overrides: list[str]) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            spent.clear()
            result = hpmkd.fit("mlp_small", data="letter", overrides=[*common, *overrides])
            return {**spent, "total": result.metrics["time"]["units"][-1]["train_time_s"]}

        return run

    configs: dict[str, Callable[[], dict[str, float]]] = {"plain loop": plain}
    for given in ["hpmkd=", *args.configs]:
        name, _, overrides = given.partition("=")
        configs[name] = fitted([o for o in overrides.split(",") if o])
    fitted([])()  # warm-up: imports, data and store
    times: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, run in configs.items():
            times[name].append(run())
    for name, runs in times.items():
        phases = "  ".join(
            f"{k} {min(r.get(k, 0.0) for r in runs) / args.epochs * 1000:.1f}" for k in runs[0]
        )
        print(f"{name}: {phases} (ms per epoch, minimum of {args.repeats})")


if __name__ == "__main__":
    main()
