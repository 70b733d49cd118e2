"""The run history H that ACM learns from, kept in the shared store (METHODS.md section 2, 1 and 6).

H is ``history.jsonl`` in the store's root directory: one JSON object per line, one line per
finished run, appended and never rewritten. A row looks like::

    {
      "phi": {"n_train": 50000.0, "n_classes": 100.0, ..., "teacher_acc": 72.3},
      "config": {"T0": 4.0, "alpha": 0.9, "lr": 0.05, "epochs": 240, "epsilon": 0.5},
      "result": {"retention": 0.97, "student_acc": 70.1},
      "data": "cifar100",
      "strategy": "hpmkd",
      "run": "<run directory or id>",
      "time": 1767225600.0
    }

``phi`` holds the meta-features of ``hpmkd.hpm.acm.META_FEATURES``; ``config`` the knobs ACM
chooses; ``result`` what the run achieved; ``time`` is seconds since the epoch. Every field is
optional to readers: a row written before a field existed (no ``"epsilon"``, say) is still read,
and ACM simply does not learn from rows that lack what it needs.

Concurrent runs append safely: each row is one ``write`` of a whole line, made under a file lock
(``history.jsonl.lock`` beside it) and flushed to disk before the lock is released. A line torn by
a crash is skipped when reading, with a warning.

``freeze`` copies the history, once, to a snapshot file (a sweep's ``acm_history.jsonl``, see
``hpmkd.hpm.source``), so that every member of a sweep reads the rows that existed when it began.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from hpmkd.io import write_atomic

HISTORY_FILE = "history.jsonl"

log = logging.getLogger("hpmkd")


def _paths(store_root: str | os.PathLike) -> tuple[Path, FileLock]:
    path = Path(store_root).expanduser() / HISTORY_FILE
    return path, FileLock(str(path.with_name(HISTORY_FILE + ".lock")))


def append_run(store_root: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` as one line of ``history.jsonl`` under ``store_root``.

    The row must be plain JSON (numbers, strings, lists, dicts, None); NaN and infinity are
    refused with a ValueError before anything is written, so the file stays standard JSON.
    """
    line = json.dumps(dict(row), sort_keys=True, allow_nan=False) + "\n"
    path, lock = _paths(store_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock, open(path, "a+b") as f:
        # A crash mid-write can leave a last line without its newline; start a fresh line so
        # that only the torn row is lost, not this one too.
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read_history(store_root: str | os.PathLike) -> list[dict]:
    """All rows of ``history.jsonl`` in the order they were appended; [] when there is none."""
    path, lock = _paths(store_root)
    if not path.is_file():
        return []
    with lock:
        text = path.read_text(encoding="utf-8", errors="replace")
    return _parse(text, path)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a history file that nobody appends to (a snapshot, a copy): read without a
    lock, so that nothing is ever created beside it; [] when the file is empty."""
    path = Path(path).expanduser()
    return _parse(path.read_text(encoding="utf-8", errors="replace"), path)


def freeze(store_root: str | os.PathLike, snapshot: str | os.PathLike) -> bool:
    """Copy the store's history to ``snapshot`` unless that file exists already; True when this
    call made the copy. Under a lock beside ``snapshot``, so that of concurrent callers exactly
    one copies and none reads a half-written snapshot; a store without a history gives an empty
    snapshot (the rows appended later must stay out of it)."""
    snapshot = Path(snapshot)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(snapshot.with_name(snapshot.name + ".lock"))):
        if snapshot.is_file():
            return False
        path, lock = _paths(store_root)
        data = b""
        if path.is_file():
            with lock:
                data = path.read_bytes()
        write_atomic(snapshot, lambda tmp: tmp.write_bytes(data))
        return True


def _parse(text: str, path: Path) -> list[dict]:
    rows, skipped = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d unreadable line(s)", path, skipped)
    return rows
