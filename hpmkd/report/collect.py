"""Find results.json files below some directories and flatten them into one table."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from hpmkd.errors import UserError
from hpmkd.results import RESULTS_FILE, RESUMED_INTO_FILE, SCHEMA_VERSION


class Unreadable(Exception):
    """A results.json, or the configuration in it, that cannot become a row."""


def _row(results: dict, path: Path) -> dict:
    config = results.get("config")
    if not isinstance(config, dict):
        raise Unreadable("unreadable config: results.json holds no configuration")
    try:
        teacher = results.get("teacher") or {}
        student = results["student"]
        details = results.get("details") or {}
        cost = results.get("cost") or {}
        student_cost, teacher_cost = cost.get("student") or {}, cost.get("teacher") or {}
        settings = flat_settings(config | _perf(results))
        return {
            "data": results["data"]["name"],
            "strategy": results["strategy"],
            "method": results["method"],
            "teacher": teacher.get("arch"),
            "student": student["arch"],
            "recipe": config["recipe"]["name"],
            "epochs": results["epochs"],
            "seed": results["seed"],
            "test_acc": results["test_acc"],
            "test_acc_last": results.get("test_acc_last"),
            "acc_best": results["acc_best"],
            "acc_last": results["acc_last"],
            "teacher_acc": results.get("teacher_acc"),
            # student test accuracy / teacher test accuracy, as the run computed it
            "retention": results.get("retention"),
            "compression_ratio": results.get("compression_ratio"),
            "student_params": student["params"],
            "extra_params": student.get("extra_params", 0),
            # deployment cost (results.json ``cost``; latency only from runs with bench=true)
            "student_flops": student_cost.get("flops"),
            "student_latency_ms": student_cost.get("latency_ms"),
            "teacher_params": teacher_cost.get("params", teacher.get("params")),
            "teacher_latency_ms": teacher_cost.get("latency_ms"),
            "time_s": _total_time(results),
            "forgetting_pct": _mean(details.get("forgetting_pct")),
            "acm": acm_choice(details),
            "path": str(path.parent),
            "finished": path.stat().st_mtime,
            # the performance switches as they resolved, not as configured ("auto")
            "settings": settings,
            "config": config_id(settings),
            "curves": {
                "val_acc": results.get("val_acc_history") or [],
                **(results.get("curves") or {}),
            },
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise Unreadable(f"unreadable results.json: missing or malformed {err}") from err


def _total_time(results: dict) -> float:
    """Wall time over every segment of a resumed run when recorded, else this process's."""
    total = (results.get("time") or {}).get("total_s")
    return results["wall_time_s"] if total is None else total


# Not part of a configuration's identity: the seed (rows aggregate over it), which result a
# sweeper reads, and what changes only where a run writes, how it logs or how fast it runs
# (data.cache_dir: a decoded copy), or what it measures besides (bench: latency).
NOT_IDENTITY = (
    "seed", "resume", "checkpoint_every_s", "tags", "skip_complete", "teacher_cache", "paths",
    "logger", "store", "perf", "hydra", "trainer.enable_progress_bar", "optimized_metric", "bench",
    "pack",
)  # fmt: skip


def in_identity(name: str) -> bool:
    """Whether the dotted setting ``name`` tells one configuration from another."""
    excluded = any(name == k or name.startswith(f"{k}.") for k in NOT_IDENTITY)
    return not excluded and not name.endswith(".cache_dir")


def identity(settings: dict[str, str]) -> dict[str, str]:
    """The settings that make a configuration: every one but ``NOT_IDENTITY``'s."""
    return {name: value for name, value in settings.items() if in_identity(name)}


def config_id(settings: dict[str, str]) -> str:
    """A short digest of ``identity(settings)``: equal for runs of one configuration."""
    text = json.dumps(sorted(identity(settings).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def flat_settings(config: dict, prefix: str = "") -> dict[str, str]:
    """The run's configuration as ``dotted.key -> value`` (values as short JSON text); an
    empty node is a value (``{}``), so that no key vanishes."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flat_settings(value, f"{name}.")
        else:
            flat[name] = json.dumps(value, separators=(",", ":"))
    return flat


def acm_choice(details: dict) -> str | None:
    """What HPM-KD's configuration manager chose (``details.config``), and from what."""
    chosen = details.get("config")
    if not isinstance(chosen, dict):
        return None
    text = (
        f"T0 {chosen['T0']:g}, α {chosen['alpha']:g}, lr {chosen['lr']:g}, "
        f"{chosen['epochs']} ep, ε {chosen['epsilon']:g}"
    )
    acm = details.get("acm")
    if acm is None:
        return f"{text} (ACM off)"
    if acm.get("source") == "history":
        return f"{text} ({acm.get('n_history')} rows)"
    return f"{text} ({str(acm.get('source')).replace('_', ' ')})"


def _perf(results: dict) -> dict:
    return {"perf": results["perf"]} if results.get("perf") else {}


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def _natural(path: Path) -> list[str | int]:
    """Sort key that puts sweep member ``2`` before ``10``: the order Hydra launched them."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _read(path: Path) -> dict:
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise Unreadable(f"unreadable results.json: {' '.join(str(err).split())}") from err
    if not isinstance(results, dict):
        raise Unreadable("unreadable results.json: not a JSON object")
    return results


def _scan(dirs: Iterable[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """Rows of the completed current-schema runs, and records of the results.json set aside:
    unreadable, or of another schema (never merged with current runs)."""
    rows, set_aside = [], []
    for directory in dirs:
        root = Path(directory)
        if not root.exists():
            raise UserError(f"no such directory: {root}")
        for path in sorted(root.rglob(RESULTS_FILE), key=_natural):
            results: dict = {}
            try:
                results = _read(path)
                if results.get("status") != "completed":
                    continue  # collect_failures lists it
                schema = results.get("schema", 1)
                if schema != SCHEMA_VERSION:
                    raise Unreadable(
                        f"results.json of schema {schema}; this report reads schema "
                        f"{SCHEMA_VERSION} and never merges the two"
                    )
                rows.append(_row(results, path))
            except Unreadable as err:
                record = {k: results.get(k) for k in ("strategy", "method", "seed")}
                set_aside.append(record | {"path": str(path.parent), "reason": str(err)})
    return rows, set_aside


def collect_results(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per completed run of the current results.json schema below ``dirs`` (any depth),
    repeats of a configuration and seed included (``summarise`` counts each seed once)."""
    dirs = list(dirs)
    rows, set_aside = _scan(dirs)
    if not rows:
        aside = f" ({len(set_aside)} set aside: unreadable or another schema)" if set_aside else ""
        where = f"schema {SCHEMA_VERSION} under {', '.join(map(str, dirs))}"
        raise UserError(f"no completed results.json of {where}{aside}")
    return pd.DataFrame(rows)


def collect_set_aside(dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """The completed or unreadable results.json below ``dirs`` that no table row includes: an
    older (or newer) schema, an unreadable file or configuration; ``path`` and ``reason``."""
    return _scan(list(dirs))[1]


# files only a run directory holds: hpmkd's own, and the config Hydra saves when a job starts
_RUN_MARKERS = (RESULTS_FILE, "failure.json", "run.json", ".hydra/config.yaml")


def collect_failures(dirs: Iterable[str | os.PathLike]) -> list[dict]:
    """Runs below ``dirs`` without completed results: failed (``failure.json``: the error), or
    unfinished (started, then killed or still running), so that no run drops out unseen. A run
    another run resumed and finished (``resumed_into.json``) is that run, not a failure."""
    run_dirs = {
        path.parent.parent if marker.startswith(".hydra") else path.parent
        for directory in dirs
        for marker in _RUN_MARKERS
        for path in Path(directory).rglob(marker)
    }
    failures = []
    for run_dir in sorted(run_dirs, key=_natural):
        results, failure = run_dir / RESULTS_FILE, run_dir / "failure.json"
        if (run_dir / RESUMED_INTO_FILE).is_file():
            continue
        if results.is_file():
            try:
                status = _read(results).get("status")
            except Unreadable:
                continue  # collect_set_aside lists it
            if status == "completed":
                continue
            record = {"status": status, "error": f"results.json with status {status!r}"}
        elif failure.is_file():
            record = _failure(failure)
        else:
            record = {"status": "unfinished", "error": "no results.json: killed or still running"}
        failures.append(record | {"path": str(run_dir)})
    return failures


def _failure(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {"status": "failed", "error": f"unreadable failure.json: {err}"}
    return record if isinstance(record, dict) else {"status": "failed", "error": str(record)}
