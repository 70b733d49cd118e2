"""hydra/launcher=packed: a packed member equals the same member run alone, and members that
cannot be packed run alone with a log line saying why."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import hpmkd
from hpmkd.cli import _pack_switch
from hpmkd.errors import UserError
from hpmkd.train import run_identity
from tests.conftest import CliRun

QUICK = [
    "data=breast_cancer",
    "recipe.epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "+strategy=kd",
    "teacher.seed=0",  # one stored teacher shared by the seeds
]


def _member(outputs: Path, sweep: str, num: int) -> tuple[dict, dict[str, torch.Tensor]]:
    run = outputs / sweep / str(num)
    results = json.loads((run / "results.json").read_text())
    return results, torch.load(run / "student.pt", weights_only=True)


# two loss groups (one per temperature): batched losses and two teacher tables, or vmap
@pytest.mark.parametrize(("path", "temperatures"), [("stacked", "4,2"), ("vmap", "4,2")])
def test_a_packed_member_equals_the_member_alone(
    run_cli: Callable[..., CliRun],
    hpmkd_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    temperatures: str,
) -> None:
    import hpmkd.engine.packed_fit as packed_fit

    forward = packed_fit._pack_forward
    used: list[bool] = []

    def spy(student: torch.nn.Module, buffers: dict) -> tuple:
        if path == "vmap":  # as for any architecture but an MLP of Linear layers and ReLU,
            monkeypatch.setattr(packed_fit, "stacked_forward", lambda student: None)
            # and any method without a batched form
            monkeypatch.setattr(packed_fit, "batched_form", lambda method: None)
        used.append(packed_fit.stacked_forward(student) is not None)
        return forward(student, buffers)

    monkeypatch.setattr(packed_fit, "_pack_forward", spy)
    switch = "pack=true" if path == "stacked" else "hydra/launcher=packed"  # the same launcher
    packed = run_cli(
        "train", "-m", *QUICK, switch, "seed=0,1,2", f"method.temperature={temperatures}",
        f"hydra.sweep.dir={hpmkd_env / 'packed'}",
    )  # fmt: skip
    assert packed.code == 0, packed.err
    count = 3 * len(temperatures.split(","))
    assert f"{count} student fits packed as one model" in packed.out + packed.err
    assert used == [path == "stacked"]
    alone = run_cli(
        "train", "-m", *QUICK, "seed=2", "method.temperature=2",
        f"hydra.sweep.dir={hpmkd_env / 'alone'}",
    )  # fmt: skip
    assert alone.code == 0, alone.err
    root = hpmkd_env
    ours, our_student = _member(root, "packed", count - 1)  # seed=2, T=2: the last member
    theirs, their_student = _member(root, "alone", 0)
    assert run_identity(ours["config"]) == run_identity(theirs["config"])
    for name, value in their_student.items():
        torch.testing.assert_close(our_student[name], value)
    assert set(ours) == set(theirs)
    assert ours["val_acc_history"] == pytest.approx(theirs["val_acc_history"])
    for name, curve in theirs["curves"].items():
        assert ours["curves"][name] == pytest.approx(curve, rel=1e-5)
    for key in ("test_acc", "test_acc_last", "test_acc_best", "best_epoch", "epochs"):
        assert ours[key] == pytest.approx(theirs[key])
    loaded = hpmkd.load_student(root / "packed" / str(count - 1))  # its checkpoints/best.ckpt
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, our_student[name])
    assert not (
        root / "packed" / str(count - 1) / "checkpoints" / "last.ckpt"
    ).exists()  # not resumable


def test_members_that_cannot_be_packed_run_alone_and_say_why(
    run_cli: Callable[..., CliRun], hpmkd_env: Path
) -> None:
    sweep = run_cli(
        "train", "-m", *QUICK, "hydra/launcher=packed", "method=kd,fitnet",
        f"hydra.sweep.dir={hpmkd_env / 'mixed'}",
    )  # fmt: skip
    assert sweep.code == 0, sweep.err
    log = sweep.out + sweep.err
    assert "#1 not packed, trained alone: method 'fitnet' reads features" in log
    assert "#0 not packed, trained alone: no other member shares" in log
    assert len(list((hpmkd_env / "mixed").rglob("results.json"))) == 2


def test_pack_true_stands_for_the_packed_launcher(capsys: pytest.CaptureFixture) -> None:
    assert _pack_switch(["-m", "seed=0,1", "pack=true"]) == [
        "-m",
        "seed=0,1",
        "hydra/launcher=packed",
    ]
    assert _pack_switch(["-m", "pack=True", "hydra/launcher=packed"]) == [
        "-m",
        "hydra/launcher=packed",
    ]
    assert _pack_switch(["-m", "seed=0,1", "pack=false"]) == ["-m", "seed=0,1"]
    assert capsys.readouterr().err == ""
    assert _pack_switch(["seed=0", "pack=true"]) == ["seed=0"]  # one run: nothing to pack
    assert "pack=true has no effect on a single run" in capsys.readouterr().err
    with pytest.raises(UserError, match="cannot go with hydra/launcher=parallel"):
        _pack_switch(["-m", "pack=true", "hydra/launcher=parallel"])
    with pytest.raises(UserError, match="pack takes true or false; got 'pack=yes'"):
        _pack_switch(["-m", "pack=yes"])


def test_pack_true_in_a_config_is_refused(run_cli: Callable[..., CliRun]) -> None:
    run = run_cli("train", *QUICK, "++pack=true")
    assert run.code == 2
    assert "pack: true works on the command line only" in run.err


def _twelve_classes(path: Path) -> Path:
    """A learnable table of 12 classes (so that top-5 accuracy is logged), 6 numeric features."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(720) % 12
    x = torch.randn(720, 6, generator=gen) + torch.stack([y % 3, y // 3, y % 4], 1).repeat(1, 2)
    rows = ["a,b,c,d,e,f,label"] + [
        ",".join(f"{v:.4f}" for v in row) + f",c{int(label)}"
        for row, label in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def _metrics(run: Path) -> list[dict[str, str]]:
    import csv

    with (run / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("strategy", ["plain", "kd"])
def test_a_packed_member_logs_the_rows_the_member_alone_logs(
    run_cli: Callable[..., CliRun], hpmkd_env: Path, strategy: str
) -> None:
    table = _twelve_classes(hpmkd_env / "twelve.csv")
    common = [
        "data=csv", f"data.path={table}", "recipe.epochs=3", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", f"+strategy={strategy}", "teacher.seed=0",
    ]  # fmt: skip
    packed = run_cli("train", "-m", *common, "pack=true", "seed=0,1",
                     f"hydra.sweep.dir={hpmkd_env / 'packed'}")  # fmt: skip
    assert packed.code == 0, packed.err
    assert "2 student fits packed as one model" in packed.out + packed.err
    alone = run_cli("train", "-m", *common, "seed=1", f"hydra.sweep.dir={hpmkd_env / 'alone'}")
    assert alone.code == 0, alone.err
    ours, theirs = _metrics(hpmkd_env / "packed" / "1"), _metrics(hpmkd_env / "alone" / "0")
    assert list(ours[0]) == list(theirs[0])  # the same columns, in the same order
    assert "val/acc_top5" in theirs[0]
    assert ("train/ce" in theirs[0]) == (strategy == "kd")  # one term: logged as train/loss
    assert len(ours) == len(theirs)
    for our_row, their_row in zip(ours, theirs, strict=True):
        for column, value in their_row.items():
            if column in ("epoch", "step") or value == "":
                assert our_row[column] == value, column
            else:
                assert float(our_row[column]) == pytest.approx(float(value), rel=1e-5), column


# resumed packed again, or each member alone (Hydra's default launcher): a pack of one
@pytest.mark.parametrize("relaunch", ["pack=true", "pack=false"])
def test_a_killed_pack_resumes_each_member_where_its_checkpoint_left_it(
    run_cli: Callable[..., CliRun],
    hpmkd_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    relaunch: str,
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [*QUICK, "recipe.epochs=300", "checkpoint_every_s=0", "seed=0,1"]
    killed = hpmkd_env / "outputs" / "killed"
    journal = killed / "1" / "journal.jsonl"

    def epochs_done() -> int:
        lines = journal.read_text().splitlines() if journal.is_file() else []
        events = [json.loads(line) for line in lines if line.strip()]
        done = [e["epoch"] for e in events if e["event"] == "epoch" and e["unit"] == "student"]
        return max(done, default=0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "hpmkd.cli", "train", "-m", *args, "pack=true",
         f"hydra.sweep.dir={killed}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while epochs_done() < 3:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the pack never reached epoch 3"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "1" / "results.json").exists(), "killed too late: the pack had finished"
    saved = [
        torch.load(killed / str(num) / "checkpoints" / "packed_last.ckpt", weights_only=True)
        for num in (0, 1)
    ]
    # a kill between the two members' writes leaves them an epoch apart: each then goes on alone
    one_epoch = saved[0]["epochs_done"] == saved[1]["epochs_done"]

    import hpmkd.engine.packed_fit as packed_fit
    import hydra_plugins.hpmkd_packed_launcher._launch as launch

    started: list[int] = []  # each resumed fit's start_epoch
    train_pack = packed_fit.train_pack

    def spy(requests: list) -> list:
        results = train_pack(requests)
        started.extend(result.start_epoch for result in results)
        return results

    monkeypatch.setattr(packed_fit, "train_pack", spy)
    monkeypatch.setattr(launch, "train_pack", spy)
    resumed = run_cli(
        "train", "-m", *args, relaunch, "resume=true", f"hydra.sweep.dir={hpmkd_env / 'r'}"
    )
    assert resumed.code == 0, resumed.err
    packed_again = "2 student fits packed as one model" in resumed.out + resumed.err
    assert packed_again == (relaunch == "pack=true" and one_epoch)
    assert sorted(started) == sorted(s["epochs_done"] for s in saved)
    clean = run_cli("train", "-m", *args, "pack=true", f"hydra.sweep.dir={hpmkd_env / 'clean'}")
    assert clean.code == 0, clean.err
    for num in (0, 1):
        ours, our_student = _member(hpmkd_env / "outputs", "killed", num)
        theirs, their_student = _member(hpmkd_env, "clean", num)
        assert ours["status"] == "completed"
        for name, value in their_student.items():
            torch.testing.assert_close(our_student[name], value)
        assert ours["val_acc_history"] == pytest.approx(theirs["val_acc_history"])
        for key in ("test_acc", "test_acc_best", "best_epoch"):
            assert ours[key] == pytest.approx(theirs[key])
        lines = (hpmkd_env / "outputs" / "killed" / str(num) / "journal.jsonl").read_text()
        starts = [
            e["epoch"] for e in map(json.loads, lines.splitlines())
            if e["event"] == "fit_start" and e["unit"] == "student"
        ]  # fmt: skip
        assert starts[0] == 0 and starts[1] == saved[num]["epochs_done"] >= 3  # not from scratch
