"""Packed sweep members: the student fits of several runs trained as one vmapped model.

``hydra/launcher=packed`` runs each member's ``run_train`` in a thread of its own, one thread
at a time: a member goes through everything a run does (validation, data, its teacher from the
store or trained, run.json, journal) until its student's fit, where ``engine.fit`` hands the fit
to the member's ``PackMember`` and waits. Once every member has arrived (or finished, or
failed), the launcher trains the fits that can be packed together (``packed_fit.py``) and
releases each member, one at a time, with its ``FitResult``: from there it writes its results
exactly as a run alone does. A fit that cannot be packed runs alone, as it would have, with one
log line saying why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

_local = threading.local()

# A packed member's resumable checkpoint: its slice of the pack's state (packed_fit.py)
PACKED_CHECKPOINT = Path("checkpoints") / "packed_last.ckpt"


@dataclass
class FitRequest:
    """A member's student fit, as ``engine.fit`` received it."""

    module: Any  # DistillModule
    datamodule: L.LightningDataModule
    out_dir: Path
    epochs: int
    trainer_kwargs: dict[str, Any]
    loggers: Sequence[Logger] | bool
    callbacks: Sequence[Callback]
    rng_state: Any  # the global torch RNG state when the fit started (its batch order)
    checkpoint_every_s: float = 0.0
    resume: dict[str, Any] | None = None  # the member's packed checkpoint, when it continues one


@dataclass
class PackMember:
    """One member's thread and the hand-over between it and the launcher."""

    name: str
    run_dir: Path
    target: Callable[[], Any]
    request: FitRequest | None = None
    result: Any = None  # a FitResult from the packed fit, or None: fit alone
    outcome: Any = None  # what ``target`` returned
    error: BaseException | None = None  # raised outside the run (a bug of the launcher)
    failure: Exception | None = None  # the packed fit's error, raised in the member's fit
    done: bool = False
    _go: threading.Event = field(default_factory=threading.Event)
    _paused: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def resume(self) -> None:
        """Run the member's thread until it hands over its fit or ends (launcher side)."""
        self._paused.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()
        else:
            self._go.set()
        self._paused.wait()
        if self.done:
            self._thread.join()

    def _main(self) -> None:
        _local.member = self
        try:
            self.outcome = self.target()
        except BaseException as err:  # noqa: BLE001 - handed to the launcher, as run_job would
            self.error = err
        finally:
            self.done = True
            self._paused.set()

    def hand_over(self, request: FitRequest) -> Any:
        """Give the launcher this member's fit and wait for its result (member side)."""
        self.request = request
        self._go.clear()
        self._paused.set()
        self._go.wait()
        if self.failure is not None:
            raise self.failure
        return self.result


def current_member() -> PackMember | None:
    """The pack member this thread runs, if any."""
    return getattr(_local, "member", None)
