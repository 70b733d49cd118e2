"""Every CUDA path of hpmkd, exercised once on one GPU in a few minutes (run by gpu_check.sh).

Each check is a short `hpmkd train` on the embedded digits data (resnet14 -> resnet8, recipe
smoke) in its own process with its own timeout; all share one artifact store in a temporary
directory, so the teacher is trained once. A check passes when the run exits 0 and its
results.json shows the path was taken (e.g. `perf.precision` is bf16-mixed). A failed check is a
row with its one-line reason; the others still run. Last, the KD job of scripts/bench_peers.py
(ResNet-56 -> ResNet-20, batch 64, CIFAR-shaped images) is timed on the GPU with hpmkd's training
path and with bench_peers' plain loop, and the 240-epoch CRD run is projected from hpmkd's rate.

    uv run python scripts/gpu_check.py                   # the table; exit 1 if a check failed
    uv run python scripts/gpu_check.py --print-commands  # the commands, one per line, nothing run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "teacher=resnet14", "student=resnet8", "teacher.seed=0", "recipe=smoke", "recipe.epochs=2",
    "trainer.enable_progress_bar=false",
]  # fmt: skip
GPU = [*TINY, "trainer=gpu"]
CRD_IMAGES, CRD_EPOCHS = 50_000, 240

Results = list[dict[str, Any]]


def _perf(key: str, want: object) -> Callable[[Results], str | None]:
    def check(results: Results) -> str | None:
        got = [r["perf"].get(key) for r in results]
        return None if got and all(v == want for v in got) else f"perf.{key} = {got}, not {want}"

    return check


def _cache_hits(results: Results) -> str | None:
    cache = results[0]["details"].get("teacher_cache") if results else None
    return None if cache and cache["hits"] > 0 else f"no teacher-cache hits: {cache}"


def _count(n: int) -> Callable[[Results], str | None]:
    return lambda results: None if len(results) == n else f"{len(results)} results, not {n}"


@dataclass(frozen=True)
class Check:
    name: str
    args: list[str]
    expect: Callable[[Results], str | None] = _count(1)
    timeout_s: int = 120

    @property
    def multirun(self) -> bool:
        return "-m" in self.args


CHECKS = [
    Check("bf16 (precision auto)", ["+strategy=kd", *GPU], _perf("precision", "bf16-mixed")),
    Check("device data", ["+strategy=kd", *GPU, "perf.device_data=true"],
          _perf("device_data", True)),
    Check("compile", ["+strategy=kd", *GPU, "perf.compile=true"], _perf("compile", True), 240),
    Check("cuda graphs", ["+strategy=kd", *GPU, "perf.cuda_graphs=true"],
          _perf("cuda_graphs", True), 240),
    Check("DDP, NCCL, 1 GPU", ["+strategy=kd", *TINY, "trainer=ddp", "trainer.devices=1",
                               "trainer.strategy.process_group_backend=nccl"]),
    Check("teachers vmapped", ["+strategy=multi_teacher", *GPU,
                               "teachers=[{arch:resnet14,seed:1},{arch:resnet14,seed:2}]"]),
    Check("teachers on streams", ["+strategy=multi_teacher", *GPU, "teachers=[resnet14,resnet8]"]),
    Check("teacher cache", ["+strategy=kd", *GPU, "recipe.augment=false"], _cache_hits),
    Check("parallel launcher", ["-m", "hydra/launcher=parallel",
                                "hydra.launcher.devices=[cuda:0,cuda:0,cuda:0]", "+strategy=kd",
                                *GPU, "seed=0,1,2"], _count(3), 180),
]  # fmt: skip


def command(check: Check) -> list[str]:
    return ["hpmkd", "train", *check.args]


def reason(stderr: str) -> str:
    """The line that says why a run failed: hpmkd's own error line, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("hpmkd: error:")]
    return (errors or lines or ["no output"])[-1][:160]


def run_check(check: Check, tmp: Path) -> tuple[bool, float, str, float | None]:
    """(passed, seconds, why it failed, student img/s) of one check."""
    outputs = tmp / "outputs" / check.name.replace(" ", "_").replace(",", "")
    env = {**os.environ, "HPMKD_CACHE": str(tmp / "cache"), "HPMKD_OUTPUTS": str(outputs)}
    binary = Path(sys.executable).parent / "hpmkd"
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [str(binary), *command(check)[1:]], env=env, cwd=ROOT, capture_output=True,
            text=True, timeout=check.timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, f"timed out after {check.timeout_s} s", None
    seconds = time.perf_counter() - start
    if done.returncode:
        return False, seconds, reason(done.stderr), None
    results = [json.loads(p.read_text()) for p in sorted(outputs.rglob("results.json"))]
    results = [r for r in results if r.get("status", "complete") == "complete"] or results
    why = check.expect(results)
    rates = [r["data"]["train"] * r["epochs"] / r["train_time_s"] for r in results
             if r.get("train_time_s")]  # fmt: skip
    return why is None, seconds, why or "", sum(rates) / len(rates) if rates else None


def _bench_peers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_peers", ROOT / "scripts" / "bench_peers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def throughput(steps: int, warmup: int) -> tuple[float, float]:
    """(hpmkd, plain loop) images/s of bench_peers' KD job on cuda:0: hpmkd's module and
    Trainer at the precision `hpmkd train` resolves there, with device-resident data; the plain
    loop as in bench_peers (ImageFolder, PIL transforms, fp32) with 8 loader workers."""
    import torch

    bp = _bench_peers()
    from hpmkd.data.loader import SplitsDataModule
    from hpmkd.engine.fit import make_trainer, quiet_lightning
    from hpmkd.engine.perf import resolve_perf

    device = torch.device("cuda:0")
    args = argparse.Namespace(
        teacher="resnet56_a", student="resnet20_a", batch_size=64, warmup=warmup, steps=steps,
        peer_workers=8, channels_last=True,
        precision=resolve_perf({}, "auto", device, conv=True).precision,
    )  # fmt: skip
    cache = Path(os.environ.get("HPMKD_CACHE", Path.home() / ".cache" / "hpmkd")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    root = bp.image_folder(cache, 5000)

    quiet_lightning()
    splits = bp.hpmkd_data(root)
    module = bp.hpmkd_module(args, splits, None)
    timer = bp.Timer(warmup)
    from lightning.pytorch.callbacks import Callback

    class Tick(Callback):
        def on_train_batch_start(self, *_: object) -> None:
            timer.tick()

        def on_train_end(self, *_: object) -> None:
            torch.cuda.synchronize()
            timer.tick()

    with tempfile.TemporaryDirectory() as out:
        trainer, _ = make_trainer(
            out_dir=Path(out), epochs=1, has_val=False, callbacks=[Tick()],
            trainer_kwargs={
                "accelerator": "gpu", "devices": 1, "enable_model_summary": False,
                "precision": args.precision, "limit_train_batches": warmup + steps,
                "log_every_n_steps": 50, "enable_progress_bar": False,
            },
        )  # fmt: skip
        data = SplitsDataModule(splits, args.batch_size, 512, device_data=True)
        trainer.fit(module, datamodule=data)
    hpmkd_rate = timer.images_per_s(steps, args.batch_size)

    teacher, student = bp.models(args)
    fmt = bp.memory_format(args)
    teacher = teacher.eval().requires_grad_(False).to(device, memory_format=fmt)
    student = student.train().to(device, memory_format=fmt)
    optimizer = bp.sgd(student.parameters())
    timer = bp.Timer(warmup)
    for step, (x, y) in enumerate(bp.endless(bp.pil_loader(root, args))):
        timer.tick()
        if step == warmup + steps:
            break
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = bp.kd_loss(student(x), teacher_logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
    return hpmkd_rate, timer.images_per_s(steps, args.batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-commands", action="store_true", help="print them, run nothing")
    parser.add_argument("--bench-steps", type=int, default=200)
    args = parser.parse_args()
    if args.print_commands:
        for check in CHECKS:
            print(shlex.join(command(check)))
        return 0
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="hpmkd-gpu-check-") as tmp:
        for check in CHECKS:
            ok, seconds, why, rate = run_check(check, Path(tmp))
            failed |= not ok
            status = "ok" if ok else f"failed: {why}"
            rows.append((check.name, status, f"{seconds:.0f}", f"{rate:.0f}" if rate else "-"))
            print(f"{check.name}: {status} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            os.environ.setdefault("HPMKD_CACHE", str(Path(tmp) / "cache"))
            hpmkd_rate, plain_rate = throughput(args.bench_steps, warmup=20)
            bench = ("KD r56->r20 throughput", "ok", f"{time.perf_counter() - start:.0f}",
                     f"{hpmkd_rate:.0f}")  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a failed check is a row, never an abort
            failed = True
            hpmkd_rate = plain_rate = None
            line = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            bench = ("KD r56->r20 throughput", f"failed: {line}",
                     f"{time.perf_counter() - start:.0f}", "-")  # fmt: skip
        rows.append(bench)
    width = max(len(r[0]) for r in rows)
    print(f"{'path':<{width}}  {'seconds':>7}  {'img/s':>7}  result")
    for name, status, seconds, rate in rows:
        print(f"{name:<{width}}  {seconds:>7}  {rate:>7}  {status}")
    if hpmkd_rate and plain_rate:
        hours = CRD_IMAGES * CRD_EPOCHS / hpmkd_rate / 3600
        print(
            f"KD ResNet-56 -> ResNet-20, batch 64, on this GPU: hpmkd {hpmkd_rate:.0f} img/s vs "
            f"bench_peers' plain loop {plain_rate:.0f} img/s ({hpmkd_rate / plain_rate:.2f}x); "
            f"projected 240-epoch CRD ResNet-56 -> ResNet-20 run: {hours:.2f} h (50,000 images x "
            f"240 epochs at this rate; assumes CRD's extra cost per step is small next to the two "
            f"forwards and one backward measured here, and no evaluation time)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
