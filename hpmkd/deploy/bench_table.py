"""A bench record as a rich table: one row per model and runtime, the teacher/student ratio."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from hpmkd.deploy.bench import RUNTIMES
from hpmkd.errors import UserError

RUNTIME_NAMES = {"eager": "eager", "onnx": "onnxruntime", "torchscript": "torchscript",
                 "exported": "torch.export"}  # fmt: skip


def parse_runtimes(value: str) -> list[str]:
    if value == "all":
        return list(RUNTIMES)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise UserError(f"unknown runtime '{value}'; valid: {', '.join(RUNTIMES)}, all")
    return names


def _speedups(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per runtime: the teacher's p50 over the student's."""
    p50 = {(r["model"], r["runtime"]): r["p50_ms"] for r in rows}
    return {
        runtime: p50[("teacher", runtime)] / p50[("student", runtime)]
        for (model, runtime) in p50
        if model == "student" and ("teacher", runtime) in p50
    }


def bench_table(record: dict[str, Any]) -> Table:
    archs = dict.fromkeys(f"{row['model']} {row['arch']}" for row in record["rows"])
    table = Table(
        title=f"hpmkd bench: {', '.join(archs)}",
        caption=f"{record['machine']} ({record['device']}), {record['threads']} threads; "
        "speed-up: the teacher's p50 over the student's on the same runtime",
    )
    columns = ("model", "runtime", "params", "FLOPs", "KB", "p50 ms", "p95 ms",
               f"/s @{record['batch']}", "speed-up")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    speedups = _speedups(record["rows"])
    for row in record["rows"]:
        ratio = speedups.get(row["runtime"]) if row["model"] == "student" else None
        table.add_row(
            row["model"], RUNTIME_NAMES[row["runtime"]], f"{row['params']:,}",
            f"{row['flops']:,}", f"{row['size_bytes'] / 1e3:,.0f}", f"{row['p50_ms']:.3f}",
            f"{row['p95_ms']:.3f}", f"{row['throughput']:,.0f}",
            "-" if ratio is None else f"{ratio:.1f}x",
        )  # fmt: skip
    cost = record.get("teacher_cost")
    if cost:
        table.add_row(
            "teacher", f"{cost.get('kind', '')} (recorded)", "-",
            f"{cost.get('nodes', '-')} nodes", f"{cost.get('size_bytes', 0) / 1e3:,.0f}",
            f"{cost.get('predict_ms_per_1000', float('nan')):.3f}/1000", "-", "-", "-",
        )  # fmt: skip
    return table
