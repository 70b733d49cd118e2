"""Small models at full speed: hpmkd against a plain PyTorch loop, and a packed seed sweep.

1. CE and KD of mlp_small on letter (``/work/shared/data/tabular``, or ``--data``): a plain
   PyTorch loop (same data, initial weights, epochs, batches, Adam + cosine schedule,
   per-epoch validation, best-model checkpoint written with ``torch.save``) against
   ``hpmkd.fit`` / ``hpmkd.distill`` in this process. Train time only (from the first step to
   the last epoch's checkpoint) on both sides; test passes excluded on both sides. The plain
   KD loop runs the teacher every step; hpmkd reads its teacher prediction cache (its default).
2. An 8-seed KD sweep (``hpmkd train -m ... seed=0..7 teacher.seed=0``, the teacher trained
   and stored before): unpacked (the faster of Hydra's sequential launcher and
   ``hydra/launcher=parallel``) against ``hydra/launcher=packed``, as wall time of the command.

Setups are interleaved (A B A B) and each ratio is the median over ``--repeats`` (the sweeps:
``--sweep-repeats``). Ends with one
line ``hpmkd / plain loop: A.AAx, packed / unpacked sweep: B.BBx``: A is the slower of CE and KD
as plain_time / hpmkd_time (>= 1.0: hpmkd is as fast), B is unpacked_time / packed_time.

    python scripts/bench_small.py            # 200 epochs, 3 repeats
    python scripts/bench_small.py --quick    # the same line in a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and one repeat")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 200)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (3)")
    parser.add_argument("--seeds", type=int, default=8, help="members of the sweep")
    parser.add_argument("--sweep-repeats", type=int, default=1, help="interleaved sweep repeats")
    parser.add_argument(
        "--data",
        default=str(ROOT.parent / "shared" / "data"),
        help="the shared data folder holding tabular/letter.csv",
    )
    parser.add_argument("--skip-sweep", action="store_true", help="only hpmkd vs plain loop")
    return parser.parse_args(argv)


def plain_loop(data, student, teacher, epochs: int, out: Path, temperature: float = 4.0) -> float:
    """The hand-written loop; returns its train time in seconds."""
    import torch
    import torch.nn.functional as F

    x, y = data.x_train, data.y_train
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    best = -1.0
    # as in a process that never imported Lightning (which sets this variable on import)
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    started = time.perf_counter()
    for _ in range(epochs):
        student.train()
        for idx in torch.randperm(len(y)).split(256):
            logits = student(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x[idx])
                kl = F.kl_div(
                    F.log_softmax(logits / temperature, dim=1),
                    F.log_softmax(t_logits / temperature, dim=1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = 0.1 * loss + 0.9 * kl * temperature**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        student.eval()
        with torch.no_grad():
            acc = (student(data.x_val).argmax(1) == data.y_val).float().mean().item()
        if acc > best:
            best = acc
            torch.save(student.state_dict(), out / "best.pt")
    return time.perf_counter() - started


def hpmkd_train_s(result) -> float:
    return float(result.metrics["time"]["units"][-1]["train_time_s"])


def sweep_seconds(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hpmkd.cli", "train", "-m", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"bench_small: sweep failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    epochs = args.epochs or (20 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)
    letter = Path(args.data) / "tabular" / "letter.csv"
    if not letter.is_file():
        sys.exit(f"bench_small: {letter} is missing (pass --data <folder holding tabular/>)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="bench_small-"))
    os.environ["HPMKD_CACHE"] = str(work / "cache")
    os.environ["HPMKD_OUTPUTS"] = str(work / "outputs")

    import torch
    from machine import cpu_name

    import hpmkd
    from hpmkd.api import compose
    from hpmkd.data import load_data
    from hpmkd.engine.context import init_seed
    from hpmkd.engine.fit import quiet_lightning
    from hpmkd.models import build_model

    quiet_lightning()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"cpu: {cpu_name()}; torch threads {torch.get_num_threads()}; {epochs} epochs")
    common = [f"paths.shared_data={args.data}", "trainer=cpu", f"recipe.epochs={epochs}"]
    data = load_data(compose(["data=letter", *common]).data)

    def student() -> torch.nn.Module:
        torch.manual_seed(init_seed(0, "student"))
        return build_model("mlp_small", num_classes=26, input_shape=(16,))

    teacher_run = hpmkd.fit("mlp_large", data="letter", overrides=[*common, "recipe.epochs=10"])
    teacher = teacher_run.student.eval()
    plain_dir = work / "plain"
    plain_dir.mkdir()
    times: dict[str, list[float]] = {k: [] for k in ("ce_plain", "ce", "kd_plain", "kd")}
    for _ in range(repeats):
        times["ce_plain"].append(plain_loop(data, student(), None, epochs, plain_dir))
        times["ce"].append(hpmkd_train_s(hpmkd.fit("mlp_small", data="letter", overrides=common)))
        times["kd_plain"].append(plain_loop(data, student(), teacher, epochs, plain_dir))
        kd = hpmkd.distill(teacher, "mlp_small", data="letter", overrides=common)
        times["kd"].append(hpmkd_train_s(kd))
    print("train times (s), per repeat:", {k: [round(t, 2) for t in v] for k, v in times.items()})
    median = {k: statistics.median(v) for k, v in times.items()}
    ce_ratio = median["ce_plain"] / median["ce"]
    kd_ratio = median["kd_plain"] / median["kd"]
    for kind, ratio in (("ce", ce_ratio), ("kd", kd_ratio)):
        print(
            f"{kind}: plain loop {median[kind + '_plain']:.2f} s, hpmkd {median[kind]:.2f} s "
            f"train time -> plain / hpmkd {ratio:.2f}x"
        )
    speed = min(ce_ratio, kd_ratio)
    packed_ratio = float("nan")
    if not args.skip_sweep:
        packed_ratio = bench_sweep(args, epochs, args.sweep_repeats, work)
    print(f"hpmkd / plain loop: {speed:.2f}x, packed / unpacked sweep: {packed_ratio:.2f}x")


def bench_sweep(args: argparse.Namespace, epochs: int, repeats: int, work: Path) -> float:
    seeds = ",".join(str(s) for s in range(args.seeds))
    env = dict(os.environ)
    base = [
        "experiment=tabular_letter",
        f"paths.shared_data={args.data}",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        f"recipe.epochs={epochs}",
        "teacher.seed=0",
        f"seed={seeds}",
    ]
    # the shared teacher, trained and stored once before anything is timed
    sweep_seconds([*base[:-1], "seed=0", f"hydra.sweep.dir={work / 'warm'}"], env)
    times: dict[str, list[float]] = {"sequential": [], "parallel": [], "packed": []}
    for r in range(repeats):
        for launcher in times:
            extra = [] if launcher == "sequential" else [f"hydra/launcher={launcher}"]
            where = f"hydra.sweep.dir={work / f'{launcher}{r}'}"
            times[launcher].append(sweep_seconds([*base, *extra, where], env))
    print(
        "sweep wall times (s), per repeat:", {k: [round(t, 1) for t in v] for k, v in times.items()}
    )
    median = {k: statistics.median(v) for k, v in times.items()}
    unpacked = min(median["sequential"], median["parallel"])
    ratio = unpacked / median["packed"]
    print(
        f"{args.seeds}-seed KD sweep wall time: sequential {median['sequential']:.1f} s, "
        f"parallel {median['parallel']:.1f} s, packed {median['packed']:.1f} s -> "
        f"sequential / packed {median['sequential'] / median['packed']:.2f}x, "
        f"faster unpacked / packed {ratio:.2f}x"
    )
    print(json.dumps({"sweep_s": median}))
    return ratio


if __name__ == "__main__":
    main()
