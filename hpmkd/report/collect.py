"""Find results.json files below some directories and flatten them into one table."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from hpmkd.errors import UserError


def _row(results: dict, path: Path) -> dict:
    teacher = results.get("teacher") or {}
    student = results["student"]
    return {
        "data": results["data"]["name"],
        "strategy": results["strategy"],
        "method": results["method"],
        "teacher": teacher.get("arch"),
        "student": student["arch"],
        "recipe": results["config"]["recipe"]["name"],
        "epochs": results["epochs"],
        "seed": results["seed"],
        "test_acc": results["test_acc"],
        "test_acc_last": results.get("test_acc_last"),
        "acc_best": results["acc_best"],
        "acc_last": results["acc_last"],
        "teacher_acc": results.get("teacher_acc"),
        "retention": results.get("retention"),
        "compression_ratio": results.get("compression_ratio"),
        "student_params": student["params"],
        "extra_params": student.get("extra_params", 0),
        "wall_time_s": results["wall_time_s"],
        "forgetting_pct": _mean((results.get("details") or {}).get("forgetting_pct")),
        "path": str(path.parent),
        # the performance switches as they resolved, not as configured ("auto")
        "settings": flat_settings((results.get("config") or {}) | _perf(results)),
        "curves": {
            "val_acc": results.get("val_acc_history") or [],
            **(results.get("curves") or {}),
        },
    }


# where a run wrote and how it logged: never what distinguishes one configuration from another
_NOT_SETTINGS = ("seed", "resume", "tags", "paths.", "logger.", "store.", "trainer.enable_progress")


def flat_settings(config: dict, prefix: str = "") -> dict[str, str]:
    """The run's configuration as ``dotted.key -> value`` (values as short JSON text)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name.startswith(_NOT_SETTINGS):
            continue
        if isinstance(value, dict):
            flat |= flat_settings(value, f"{name}.")
        else:
            flat[name] = json.dumps(value, separators=(",", ":"))
    return flat


def _perf(results: dict) -> dict:
    return {"perf": results["perf"]} if results.get("perf") else {}


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def _natural(path: Path) -> list[str | int]:
    """Sort key that puts sweep member ``2`` before ``10``: the order Hydra launched them."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def collect_results(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per completed run found below ``dirs`` (any depth)."""
    rows = []
    for directory in dirs:
        root = Path(directory)
        if not root.exists():
            raise UserError(f"no such directory: {root}")
        for path in sorted(root.rglob("results.json"), key=_natural):
            results = json.loads(path.read_text())
            if results.get("status") == "completed":
                rows.append(_row(results, path))
    if not rows:
        raise UserError(f"no completed results.json under {', '.join(map(str, dirs))}")
    return pd.DataFrame(rows)


# files only a run directory holds: hpmkd's own, and the config Hydra saves when a job starts
_RUN_MARKERS = ("results.json", "failure.json", "run.json", ".hydra/config.yaml")


def collect_failures(dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Runs below ``dirs`` without completed results: failed (``failure.json``: the error), or
    unfinished (started, then killed or still running), so that no run drops out unseen."""
    run_dirs = {
        path.parent.parent if marker.startswith(".hydra") else path.parent
        for directory in dirs
        for marker in _RUN_MARKERS
        for path in Path(directory).rglob(marker)
    }
    failures = []
    for run_dir in sorted(run_dirs, key=_natural):
        results, failure = run_dir / "results.json", run_dir / "failure.json"
        if results.is_file():
            status = json.loads(results.read_text()).get("status")
            if status == "completed":
                continue
            record = {"status": status, "error": f"results.json with status {status!r}"}
        elif failure.is_file():
            record = json.loads(failure.read_text())
        else:
            record = {"status": "unfinished", "error": "no results.json: killed or still running"}
        failures.append(record | {"path": str(run_dir)})
    return failures
