"""results.json: what one run achieved, written atomically; and its summary table."""

from __future__ import annotations

import platform
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hpmkd.data.splits import DataSplits
from hpmkd.engine.records import StrategyResult
from hpmkd.io import write_json_atomic

RESULTS_FILE = "results.json"
# results.json layout version: 2 adds ``schema`` itself, ``time`` (total, per unit, per segment)
# and ``resumed_from``; a report never merges rows of different schemas
SCHEMA_VERSION = 2
# written into an interrupted run directory once a later run has resumed it and finished
RESUMED_INTO_FILE = "resumed_into.json"


def versions() -> dict[str, str]:
    packages = ("hpmkd", "torch", "lightning", "torchvision", "hydra-core")
    return {"python": platform.python_version(), **{p: version(p) for p in packages}}


def run_time(
    result: StrategyResult, units: list[dict[str, Any]], spans: list[dict[str, Any]]
) -> dict[str, Any]:
    """Where a run's time went, counted the same way for every strategy.

    ``total_s``: wall time of every process that worked on the run (an interrupted one up to
    its last journal line); ``train_s``: training of every model this run trained (the student,
    teachers, links, candidates; a resumed fit over all its processes); ``discarded_s``: the part
    of it spent on models the result does not use (a chain's rejected links and candidate
    students); ``units``: each model obtained, with where it came from.
    """
    kept = {"student", result.student.extra.get("chosen", "student")}
    kept |= {record.role for record in result.intermediates}

    def discarded(unit: dict[str, Any]) -> bool:
        return unit["role"].startswith(("student_", "link")) and unit["role"] not in kept

    trained = [u for u in units if u["trained_by_run"]]
    return {
        "total_s": sum(span["wall_time_s"] for span in spans),
        "train_s": sum(u["train_time_s"] or 0.0 for u in trained),
        "discarded_s": sum(u["train_time_s"] or 0.0 for u in trained if discarded(u)),
        "units": units,
        "segments": spans,
    }


def build_results(
    *,
    strategy: str,
    result: StrategyResult,
    data: DataSplits,
    config: dict[str, Any],
    seed: int,
    wall_time_s: float,
    perf: dict[str, Any] | None = None,
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    fit = result.fit
    teacher = result.teacher
    ratio = teacher.params / result.student.params if teacher else None
    return {
        "status": "completed",
        "schema": SCHEMA_VERSION,
        "strategy": strategy,
        "method": (result.method or {}).get("name", "ce"),
        "seed": seed,
        "data": data.summary() | {"fingerprint": data.fingerprint()},
        "student": asdict(result.student) | {"extra_params": result.extra_params},
        "teacher": asdict(teacher) if teacher else None,
        "intermediates": [asdict(m) for m in result.intermediates],
        "details": result.details,
        "compression_ratio": ratio,
        "epochs": fit.epochs,
        "world_size": fit.world_size,
        "acc_last": fit.acc_last,
        "acc_best": fit.acc_best,
        "best_epoch": fit.best_epoch,
        "val_acc_history": fit.val_history,
        "curves": fit.curves,
        "test_acc": fit.test_acc,
        "test_acc_last": fit.test_acc_last,
        "test_acc_best": fit.test_acc_best,
        "test_acc_top5_last": fit.test_acc5_last,
        "teacher_acc": teacher.test_acc if teacher else None,
        "retention": fit.test_acc / teacher.test_acc if teacher and teacher.test_acc else None,
        "train_time_s": fit.train_time_s,  # the reported student's fit
        "wall_time_s": wall_time_s,  # over every process that worked on the run
        "time": timing,
        "perf": perf,  # the performance switches as resolved on the device (conf/perf)
        "versions": versions(),
        "config": config,
    }


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    path = out_dir / RESULTS_FILE
    write_json_atomic(path, results)
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_summary(results: dict[str, Any], path: Path, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"hpmkd train: {results['strategy']} on {results['data']['name']}")
    for column in ("role", "model", "params", "val acc %", "test acc %", "time s", "via"):
        table.add_column(column, justify="left" if column in ("role", "model") else "right")
    teacher = [results["teacher"]] if results["teacher"] else []
    for model in teacher + results["intermediates"]:
        table.add_row(
            model["role"], model["arch"], f"{model['params']:,}", _pct(model["val_acc"]),
            _pct(model["test_acc"]), "", model["extra"].get("source", ""),
        )  # fmt: skip
    student = results["student"]
    table.add_row(
        "student", student["arch"], f"{student['params']:,}", _pct(results["acc_best"]),
        _pct(results["test_acc"]), f"{results['train_time_s']:.1f}", results["method"],
    )  # fmt: skip
    console.print(table)
    if results["compression_ratio"]:
        console.print(
            f"compression {results['compression_ratio']:.1f}x, "
            f"retention {100 * (results['retention'] or 0):.1f} % of the teacher's test accuracy"
        )
    cost = results.get("cost") or {}
    student, teacher = cost.get("student") or {}, cost.get("teacher") or {}
    if student.get("flops"):
        line = f"student {student['flops']:,} FLOPs per sample"
        if teacher.get("flops"):
            ratio = teacher["flops"] / student["flops"]
            line += f", teacher {teacher['flops']:,} ({ratio:.1f}x)"
        if student.get("latency_ms") is not None:
            line += f"; CPU latency {student['latency_ms']:.3f} ms at batch 1 (bench=true)"
        console.print(line)
    console.print(f"results: {path}")
