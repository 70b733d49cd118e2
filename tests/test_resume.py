"""Resume after kill -9, for the unit that was interrupted, in every kind of strategy.

Each test starts a real `hpmkd train` process, kills its process group with SIGKILL once the run's
journal shows a given unit at a given epoch, then resumes with `resume=true` (or a checkpoint
path) in this process and reads the journal and results.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

EPOCHS = "recipe.epochs=6"


def _journal(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kill_when(args: list[str], run_dir: Path, unit: str, epoch: int, timeout: float = 240) -> None:
    """Run `hpmkd train args` and SIGKILL it once ``unit`` has finished ``epoch`` epochs (with
    last.ckpt written after every epoch, so that the kill lands after that epoch's)."""
    every_epoch = "checkpoint_every_s=0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpmkd.cli",
            "train",
            *args,
            every_epoch,
            f"hydra.run.dir={run_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not any(
            e["event"] == "epoch" and e["unit"] == unit and e["epoch"] >= epoch
            for e in _journal(run_dir)
        ):
            if proc.poll() is not None:
                pytest.fail(f"run ended (exit {proc.returncode}) before {unit} reached {epoch}: "
                            f"{proc.stderr.read().decode()[-2000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"{unit} never reached epoch {epoch}")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def fit_starts(events: list[dict], segment: int) -> dict[str, int]:
    return {
        e["unit"]: e["epoch"]
        for e in events
        if e["event"] == "fit_start" and e["segment"] == segment
    }


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_kd_killed_while_training_its_teacher_resumes_the_teacher(hpmkd_env, run_cli):
    run_dir = hpmkd_env / "outputs" / "killed"
    args = [*TINY, EPOCHS, "+strategy=kd"]
    kill_when(args, run_dir, "teacher", 2)
    assert not (run_dir / "results.json").exists()

    resumed = run_cli("train", *args, "resume=true")

    assert resumed.code == 0, resumed.err
    results = _results(run_dir)
    assert results["status"] == "completed"
    events = _journal(run_dir)
    second = fit_starts(events, 2)
    assert second["teacher"] >= 2  # from its checkpoint, not from scratch
    assert second["student"] == 0
    assert "teacher" in fit_starts(events, 1) and "student" not in fit_starts(events, 1)
    teacher = next(u for u in results["time"]["units"] if u["role"] == "teacher")
    assert teacher["trained_by_run"] and teacher["source"] == "trained"
    segments = results["time"]["segments"]
    assert [s["ended"] for s in segments] == ["interrupted", "completed"]
    assert results["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in segments))
    # the resuming process's own directory points at the run it finished
    pointers = list((hpmkd_env / "outputs").rglob("resumed_into.json"))
    assert [json.loads(p.read_text())["resumed_into"] for p in pointers] == [str(run_dir)]


def test_progressive_killed_in_a_link_resumes_that_link_from_its_checkpoint(hpmkd_env, run_cli):
    run_dir = hpmkd_env / "outputs" / "killed"
    # epsilon -100 keeps every link, so the chain goes on past link1
    args = [*TINY, EPOCHS, "+strategy=progressive", "strategy.epsilon=-100",
            "strategy.max_length=1"]  # fmt: skip
    kill_when(args, run_dir, "link1", 3)
    checkpoint = run_dir / "link1" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    # a unit's checkpoint names the whole run: it resumes there, not only that fit
    resumed = run_cli("train", *args, f"resume={checkpoint}")

    assert resumed.code == 0, resumed.err
    events = _journal(run_dir)
    first, second = fit_starts(events, 1), fit_starts(events, 2)
    assert {"teacher", "student_direct", "link1"} <= first.keys()
    assert "teacher" not in second and "student_direct" not in second  # finished: reused
    assert second["link1"] >= 3
    assert second["student_link1"] == 0
    results = _results(run_dir)
    assert results["status"] == "completed"
    trained = {u["role"] for u in results["time"]["units"] if u["trained_by_run"]}
    assert trained == {"teacher", "student_direct", "link1", "student_link1"}


def test_smskd_resumed_counts_the_training_time_of_both_processes(hpmkd_env, run_cli):
    run_dir = hpmkd_env / "outputs" / "killed"
    args = [*TINY, EPOCHS, "+strategy=smskd", "strategy.methods=[fitnet,kd]",
            "strategy.transitions=[3]"]  # fmt: skip
    kill_when(args, run_dir, "student", 4)

    resumed = run_cli("train", *args, "resume=true")

    assert resumed.code == 0, resumed.err
    events = _journal(run_dir)
    assert fit_starts(events, 2)["student"] >= 4

    def span(segment: int, until: str, epoch: int | None = None) -> float:
        mine = [e for e in events if e["segment"] == segment and e.get("unit") == "student"]
        start = next(e["time"] for e in mine if e["event"] == "fit_start")
        end = next(e["time"] for e in mine
                   if e["event"] == until and (epoch is None or e["epoch"] == epoch))  # fmt: skip
        return end - start

    results = _results(run_dir)
    after_resume = span(2, "fit_end")
    before_kill = span(1, "epoch", 4)  # trained before the kill, up to the 4th epoch's end
    assert results["train_time_s"] > after_resume + 0.5 * before_kill
    assert [s["ended"] for s in results["time"]["segments"]] == ["interrupted", "completed"]


def test_the_direct_student_of_a_chain_is_the_kd_student(hpmkd_env, run_cli):
    """Same teacher, loss and seed: the same experiment, whichever strategy runs it."""
    kd = run_cli("train", *TINY, "+strategy=kd", "seed=3")
    chain = run_cli("train", *TINY, "+strategy=progressive", "strategy.max_length=0", "seed=3")
    assert kd.code == 0 and chain.code == 0, kd.err + chain.err
    kd_dir, chain_dir = (Path(r["config"]["paths"]["output_dir"]) for r in kd.results())
    chain_results = json.loads((chain_dir / "results.json").read_text())
    assert chain_results["student"]["extra"]["chosen"] == "student_direct"
    kd_weights = torch.load(kd_dir / "student.pt", weights_only=True)
    chain_weights = torch.load(chain_dir / "student.pt", weights_only=True)
    assert kd_weights.keys() == chain_weights.keys()
    for name, tensor in kd_weights.items():
        assert torch.equal(tensor, chain_weights[name]), name


def test_last_checkpoint_is_every_epoch_even_without_a_better_one(run_cli):
    """Lightning's save_last follows top-k saves only: with validation accuracy flat (a learning
    rate of 1e-12), last.ckpt would stay at the first epoch and a resume repeat the others."""
    out = run_cli("train", *TINY, "recipe.epochs=3", "recipe.optimizer.lr=1e-12")
    assert out.code == 0, out.err
    (checkpoint,) = out.outputs.rglob("last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3
