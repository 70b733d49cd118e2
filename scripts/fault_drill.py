"""Fault drill: kill -9 runs of every strategy at random moments, resume them, check the result.

For each strategy and each of N trials: start a small run (embedded digits data, a fresh store)
and SIGKILL its whole process group at a random moment of its training: after one of the
progress marks of an uninterrupted reference run (a fit's start or an epoch's end, drawn
uniformly; each fit of each model counts), plus a uniform fraction of the median time between two
marks, so the moment follows the run's progress whatever else loads the machine. Then
`resume=true` from a new process. A trial passes when:
- the killed run left no results.json claiming success;
- the resumed run finishes (exit 0) and writes completed results in the interrupted directory,
  whose new Hydra directory points there (resumed_into.json);
- nothing finished was trained again: no unit (teacher, link, student...) whose fit ended is
  started again, and a resumed fit starts at the last epoch its journal recorded (an epoch is
  journaled once its checkpoint is written; only the epoch in flight at the kill is repeated),
  read from the run's journal.jsonl.

    uv run python scripts/fault_drill.py --n 3            # every strategy, 3 kills each
    uv run python scripts/fault_drill.py --n 1 --strategies kd progressive

Prints one line per strategy and, last, `fault drill: K/K resumed`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from machine import cpu_name

STRATEGIES = {
    "plain": [],
    "kd": ["+strategy=kd"],
    "takd": ["+strategy=takd", "assistant=mlp"],
    "smskd": ["+strategy=smskd", "strategy.methods=[fitnet,kd]", "strategy.transitions=[0.5]"],
    "aggregate": ["+strategy=aggregate", "strategy.methods=[fitnet,kd]"],
    # epsilon -100: every link is kept, so the chain has links to interrupt
    "progressive": ["+strategy=progressive", "strategy.epsilon=-100", "strategy.max_length=2"],
    "multi_teacher": ["+strategy=multi_teacher", "teachers=[mlp_large,mlp]"],
    "hpmkd": ["+strategy=hpmkd", "strategy.epsilon=-100", "strategy.max_length=1"],
}
COMMON = [
    "data=digits",
    "recipe=smoke",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "logger=csv",
    # last.ckpt after every epoch (the default waits 10 s between writes): kills then land in
    # the middle of fits whose epochs take well under a second, not only at their starts
    "checkpoint_every_s=0",
]


@dataclass
class Trial:
    ok: bool
    killed_in: str  # the unit (and epoch) the kill interrupted, from the journal
    problems: list[str] = field(default_factory=list)


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env |= {"HPMKD_CACHE": str(root / "cache"), "HPMKD_OUTPUTS": str(root / "outputs")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _command(strategy: str, epochs: int, run_dir: Path, *extra: str) -> list[str]:
    args = [*COMMON, f"recipe.epochs={epochs}", *STRATEGIES[strategy], *extra]
    return [sys.executable, "-m", "hpmkd.cli", "train", *args, f"hydra.run.dir={run_dir}"]


def _journal(run_dir: Path) -> list[dict]:
    path = run_dir / "journal.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line torn by the kill
    return events


def _status(run_dir: Path) -> str | None:
    results = run_dir / "results.json"
    return json.loads(results.read_text()).get("status") if results.is_file() else None


def _where(events: list[dict]) -> str:
    """The unit and epoch the run was in at its last journal line."""
    for event in reversed(events):
        if event["event"] in ("fit_start", "epoch"):
            return f"{event['unit']}@{event['epoch']}"
        if event["event"] == "fit_end":
            return f"after {event['unit']}"
        if event["event"] == "unit":
            return f"after {event['unit']} ({event['source']})"
    return "start-up"


def _open_fits(events: list[dict]) -> list[str]:
    started = {e["unit"] for e in events if e["event"] == "fit_start"}
    return sorted(started - {e["unit"] for e in events if e["event"] == "fit_end"})


def redone(events: list[dict]) -> list[str]:
    """What the journal shows was trained again: a unit started after its fit had ended, or a
    resumed fit that starts earlier than its last checkpoint could have allowed."""
    problems = []
    ended: set[str] = set()
    last_epoch: dict[str, int] = defaultdict(int)
    segment_of: dict[str, int] = {}
    for event in events:
        unit, kind = event.get("unit"), event["event"]
        if kind == "fit_start":
            # a fit killed after its last epoch, before it was stored, resumes at its end
            if unit in ended and event["epoch"] < last_epoch[unit]:
                problems.append(f"{unit} trained again after it had finished")
            resumed = unit in segment_of and segment_of[unit] != event["segment"]
            if resumed and event["epoch"] < last_epoch[unit]:
                problems.append(
                    f"{unit} resumed at epoch {event['epoch']} though epoch {last_epoch[unit]} "
                    "had finished"
                )
            segment_of[unit] = event["segment"]
        elif kind == "epoch":
            last_epoch[unit] = max(last_epoch[unit], event["epoch"])
        elif kind == "fit_end":
            ended.add(unit)
    return problems


@dataclass
class Progress:
    """An uninterrupted run's progress marks (each fit's start and each epoch, from its journal)
    and the median time between two of them."""

    marks: list[tuple[str, str, int]]  # (event, unit, epoch)
    step_s: float


def reference(strategy: str, epochs: int, workdir: Path) -> Progress:
    """Run the strategy once without a kill and read its progress marks."""
    root = Path(tempfile.mkdtemp(prefix=f"ref-{strategy}-", dir=workdir))
    run_dir = root / "outputs" / "run"
    proc = subprocess.Popen(
        _command(strategy, epochs, run_dir),
        env=_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{strategy}: the uninterrupted run failed: {err.strip()[-500:]}")
    events = [e for e in _journal(run_dir) if e["event"] in ("fit_start", "epoch")]
    gaps = sorted(b["time"] - a["time"] for a, b in zip(events, events[1:], strict=False))
    marks = [(e["event"], e["unit"], e["epoch"]) for e in events]
    return Progress(marks, gaps[len(gaps) // 2] if gaps else 0.1)


def _wait_for(mark: tuple[str, str, int], run_dir: Path, proc: subprocess.Popen) -> bool:
    """Wait until the run's journal shows ``mark``; False if the run ended first."""
    while not any((e["event"], e.get("unit"), e.get("epoch")) == mark for e in _journal(run_dir)):
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def trial(
    strategy: str, epochs: int, progress: Progress, workdir: Path, rng: random.Random
) -> Trial | None:
    """Kill a run at a random moment of its training: after a progress mark drawn uniformly
    from the reference run's (a fit's start or an epoch's end), plus a uniform fraction of the
    time between two marks; then resume it and check."""
    root = Path(tempfile.mkdtemp(prefix=f"{strategy}-", dir=workdir))
    # under HPMKD_OUTPUTS, where resume=true looks for unfinished runs
    run_dir, resumer = root / "outputs" / "killed", root / "outputs" / "resumer"
    env = _env(root)
    proc = subprocess.Popen(
        _command(strategy, epochs, run_dir),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: spawned workers die with it
    )
    mark = rng.choice(progress.marks)
    if _wait_for(mark, run_dir, proc):
        time.sleep(rng.uniform(0.0, 1.0) * progress.step_s)
    if proc.poll() is not None:
        return None  # it finished before the kill: the caller draws another moment
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_events = _journal(run_dir)
    where = _where(killed_events)
    problems = []
    if _status(run_dir) == "completed":
        # results.json is written last: the kill came after the run's work, unless a fit is
        # still open in the journal (then the results claim a success that did not happen)
        open_fits = _open_fits(killed_events)
        if not open_fits:
            return None
        problems.append(f"results.json claims success while {', '.join(open_fits)} had not ended")
    resumed = subprocess.run(
        _command(strategy, epochs, resumer, "resume=true"),
        env=env,
        capture_output=True,
        text=True,
    )
    if resumed.returncode != 0:
        tail = (resumed.stderr.strip().splitlines() or ["?"])[-1]
        problems.append(f"resume exited {resumed.returncode}: {tail}")
    elif _status(run_dir) != "completed":
        problems.append("the resumed run wrote no completed results.json in the killed directory")
    if resumed.returncode == 0 and not (resumer / "resumed_into.json").is_file():
        problems.append("the resuming process's directory does not point at the resumed run")
    problems += redone(_journal(run_dir))
    if problems:
        problems.append(f"trial directory: {root}")
    return Trial(not problems, where, problems)


def interrupted_trial(
    strategy: str, epochs: int, progress: Progress, workdir: Path, rng: random.Random
) -> Trial:
    """A trial whose kill landed while the run was working (up to five draws)."""
    for _ in range(5):
        result = trial(strategy, epochs, progress, workdir, rng)
        if result is not None:
            return result
    return Trial(False, "-", ["every run finished before its kill; raise --epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3, help="kills per strategy")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument(
        "--keep", action="store_true", help="keep the trial directories (kept when one failed)"
    )
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    print(f"fault drill on {cpu_name()}, {os.cpu_count()} CPUs; "
          f"{opts.n} kills per strategy, {opts.epochs} epochs per fit")  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="hpmkd-fault-drill-"))
    passed = total = 0
    for strategy in opts.strategies:
        progress = reference(strategy, opts.epochs, workdir)
        trials = [interrupted_trial(strategy, opts.epochs, progress, workdir, rng)
                  for _ in range(opts.n)]  # fmt: skip
        ok = sum(t.ok for t in trials)
        passed, total = passed + ok, total + len(trials)
        where = ", ".join(t.killed_in for t in trials)
        print(f"{strategy}: {ok}/{len(trials)} resumed ({len(progress.marks)} progress marks; "
              f"killed in: {where})")  # fmt: skip
        for t in trials:
            for problem in t.problems:
                print(f"  {strategy}: {problem}")
        sys.stdout.flush()
    if not opts.keep and passed == total:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print(f"fault drill: {passed}/{total} resumed")
    sys.exit(0 if passed == total else 1)


if __name__ == "__main__":
    main()
