"""``model_card.md``: what a deployed student is, what it takes, how well and how fast it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpmkd.io import write_text_atomic

CARD_FILE = "model_card.md"


def _num(value: float | int | None, fmt: str = ",") -> str:
    return "-" if value is None else format(value, fmt)


def _input_text(contract: dict[str, Any]) -> str:
    spec = contract["input"]
    shape = "x".join(str(d) for d in contract["input_shape"])
    if spec["kind"] == "image":
        mean = ", ".join(f"{m:.4f}" for m in spec["mean"])
        std = ", ".join(f"{s:.4f}" for s in spec["std"])
        return (
            f"uint8 images, N x {shape} (NCHW, values 0-255); inside the model: "
            f"(x / 255 - mean) / std with mean ({mean}), std ({std})"
        )
    table = spec.get("transform")
    if not table:
        return (
            f"float32 rows of {shape} features as the data source delivered them to training "
            "(hpmkd recorded no preprocessing to undo)"
        )
    numeric = ", ".join(table["columns"])
    onehot = "".join(
        f"; then one-hot columns of `{c}` ({', '.join(values)})"
        for c, values in table["categorical"].items()
    )
    return (
        f"float32 raw table rows, {shape} columns: the numeric columns ({numeric}) unscaled, a "
        f"missing value as NaN (the training median is used){onehot}; inside the model: "
        "(x - mean) / scale with the training split's mean and scale"
    )


def card_text(
    results: dict[str, Any],
    contract: dict[str, Any],
    export: dict[str, Any],
    bench: dict[str, Any] | None = None,
) -> str:
    teacher = results.get("teacher")
    cost = results.get("cost") or {}
    student_cost = cost.get("student") or {}
    lines = [
        f"# Model card: {contract['arch']} on {contract['data']}",
        "",
        "| field | value |",
        "|---|---|",
        f"| data | {contract['data']} ({results['data']['train']} train / "
        f"{results['data']['val']} val / {results['data']['test']} test rows) |",
        f"| classes | {len(contract['class_names'])}: {', '.join(contract['class_names'])} |",
        f"| student | {contract['arch']} |",
        f"| teacher | {teacher['arch'] if teacher else 'none'} |",
        f"| method | {results['strategy']} / {results['method']} |",
        f"| test accuracy % | {_num(results.get('test_acc'), '.2f')} |",
        f"| teacher test accuracy % | {_num(results.get('teacher_acc'), '.2f')} |",
        f"| parameters | {_num(results['student']['params'])} |",
        f"| FLOPs per sample | {_num(student_cost.get('flops'))} |",
        f"| student.pt bytes | {_num(student_cost.get('size_bytes'))} |",
        f"| latency ms (batch 1, p50) | {_latency(bench, student_cost)} |",
        f"| input | {_input_text(contract)} |",
        "| output | class probabilities (softmax), one row per input, columns in class order |",
        "",
        "## Files",
        "",
        f"Checked against PyTorch's probabilities on {export['check_rows']} "
        f"{export['checked_on']}:",
        "",
        "| file | bytes | max difference |",
        "|---|---|---|",
    ]
    for entry in export["files"].values():
        lines.append(f"| {entry['path']} | {entry['bytes']:,} | {entry['max_diff']:.2g} |")
    quantized = export.get("quantized")
    if quantized:
        lines += [
            "",
            "## int8 quantisation",
            "",
            f"{quantized['mode']} int8, `{quantized['path']}` ({quantized['bytes']:,} bytes): "
            f"test accuracy {quantized['acc_before']:.2f} % before, {quantized['acc_after']:.2f} % "
            f"after ({quantized['acc_after'] - quantized['acc_before']:+.2f} points, "
            f"{quantized['test_rows']} test rows).",
        ]
    return "\n".join(lines) + "\n"


def _latency(bench: dict[str, Any] | None, cost: dict[str, Any]) -> str:
    if bench:
        rows = [r for r in bench["rows"] if r["model"] == "student" and r["runtime"] == "eager"]
        if rows:
            return f"{rows[0]['p50_ms']:.3f} ({bench['device']}, {bench['threads']} threads)"
    if cost.get("latency_ms") is not None:
        return f"{cost['latency_ms']:.3f} (cpu, {cost.get('threads')} threads)"
    return "- (not measured: hpmkd bench <run dir>)"


def write_card(
    out_dir: Path,
    results: dict[str, Any],
    contract: dict[str, Any],
    export: dict[str, Any],
    bench: dict[str, Any] | None = None,
) -> Path:
    path = out_dir / CARD_FILE
    write_text_atomic(path, card_text(results, contract, export, bench))
    return path
