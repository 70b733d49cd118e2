"""A run's journal: what each process of a run did, appended as it happens.

``journal.jsonl`` in the run directory holds one JSON object per line: a process starting on the
run (``segment``), a model's fit starting (``fit_start``, with the epoch it starts from: 0, or
the epoch of the checkpoint it resumes), each finished epoch (``epoch``), a fit ending
(``fit_end``) and a model obtained without training (``unit``: from the store or a checkpoint).
A process killed with ``kill -9`` leaves every line it wrote before, so a resumed run can sum the
wall time of every process that worked on it, and a fault drill can check that no finished fit
was started again. Lines are appended whole and flushed; a torn last line is skipped on reading.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from hpmkd.engine.checkpoints import resumable_now

JOURNAL_FILE = "journal.jsonl"


@dataclass(frozen=True)
class Journal:
    """Appends events to ``<run dir>/journal.jsonl``; ``segment`` numbers this process's lines."""

    path: Path
    segment: int

    @classmethod
    def start(cls, run_dir: Path, **fields: Any) -> Journal:
        """A new segment: this process starts (or resumes) working on the run."""
        path = Path(run_dir) / JOURNAL_FILE
        segment = 1 + max((e.get("segment", 0) for e in read_journal(path)), default=0)
        journal = cls(path, segment)
        journal.write("segment", pid=os.getpid(), **fields)
        return journal

    def trained(self, unit: str) -> bool:
        """Whether a fit of ``unit`` ran to its end in any process of this run."""
        return any(
            e.get("event") == "fit_end" and e.get("unit") == unit for e in read_journal(self.path)
        )

    def write(self, event: str, **fields: Any) -> None:
        line = {"event": event, "segment": self.segment, "time": time.time(), **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
            f.flush()


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's events in order; [] when there is none (a torn line is skipped)."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def segments(events: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Per process that worked on the run: its wall time from its start to its last journal line
    (an interrupted process) or to ``now`` (the last, current one, when ``now`` is given)."""
    spans: dict[int, dict[str, Any]] = {}
    for event in events:
        number = event.get("segment", 0)
        span = spans.setdefault(number, {"segment": number, "start": event["time"]})
        span["last"] = event["time"]
        if event["event"] == "segment":
            span["start"] = event.get("started", event["time"])
            span["resumed"] = bool(event.get("resumed"))
    ordered = sorted(spans.values(), key=lambda s: s["segment"])
    out = []
    for k, span in enumerate(ordered):
        current = now is not None and k == len(ordered) - 1
        end = now if current else span["last"]
        out.append(
            {
                "segment": span["segment"],
                "resumed": span.get("resumed", False),
                "wall_time_s": max(0.0, end - span["start"]),
                "ended": "completed" if current else "interrupted",
            }
        )
    return out


class JournalEpochs(Checkpoint):
    """Journals each fit's start (with its first epoch), every epoch whose resumable checkpoint
    is on disk (``checkpoint_every_s``) and its end.

    A ``Checkpoint`` so that Lightning runs its hooks after the ModelCheckpoint given before it:
    an epoch is journaled once its checkpoint is on disk, so a resume never starts before it.
    """

    def __init__(self, journal: Journal, unit: str) -> None:
        self.journal = journal
        self.unit = unit

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.journal.write("fit_start", unit=self.unit, epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and resumable_now(trainer):
            self.journal.write("epoch", unit=self.unit, epoch=trainer.current_epoch + 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.journal.write("fit_end", unit=self.unit, epoch=trainer.current_epoch)
