"""hpmkd report's deployment-cost columns and the accuracy-vs-cost figures with their Pareto
front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpmkd.report import collect_results, summarise
from hpmkd.report.pareto import pareto_front
from hpmkd.report.tables import format_markdown
from hpmkd.results import SCHEMA_VERSION


def _write(
    root: Path,
    name: str,
    *,
    method: str,
    seed: int,
    acc: float,
    flops: int,
    latency: float | None,
    bench: bool = False,
) -> None:
    cost = {
        "student": {"params": 100, "flops": flops, "size_bytes": 900}
        | ({"latency_ms": latency} if latency is not None else {}),
        "teacher": {"params": 5000, "flops": 10 * flops},
    }
    results = {
        "status": "completed",
        "schema": SCHEMA_VERSION,
        "strategy": "kd",
        "method": method,
        "seed": seed,
        "data": {"name": "toy"},
        "epochs": 2,
        "config": {"recipe": {"name": "smoke"}, "method": {"name": method}, "bench": bench},
        "student": {"arch": "mlp_small", "params": 100, "extra_params": 0},
        "teacher": {"arch": "mlp_large", "params": 5000},
        "test_acc": acc,
        "acc_best": acc,
        "acc_last": acc,
        "teacher_acc": 90.0,
        "retention": acc / 90,
        "compression_ratio": 50.0,
        "wall_time_s": 1.0,
        "cost": cost,
    }
    path = root / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


def _markdown_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(headers, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def test_pareto_front_of_hand_made_points() -> None:
    costs = [1.0, 2.0, 3.0, 4.0, 2.0, 5.0]
    accuracies = [70.0, 80.0, 75.0, 90.0, 80.0, 90.0]
    # (3, 75) is beaten by (2, 80); (5, 90) costs more than (4, 90) for the same accuracy;
    # the two equal points (2, 80) are both on the front
    assert pareto_front(costs, accuracies) == [True, True, False, True, True, False]
    assert pareto_front([], []) == []


def test_report_columns_and_tradeoff_figures(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the terminal table unfolded
    runs = tmp_path / "runs"
    _write(runs, "kd0", method="kd", seed=0, acc=80.0, flops=2000, latency=0.2, bench=True)
    _write(runs, "kd1", method="kd", seed=1, acc=82.0, flops=2000, latency=0.4)
    _write(runs, "dkd0", method="dkd", seed=0, acc=70.0, flops=4000, latency=None)
    table = summarise(collect_results([runs])).set_index("method")
    # bench=true measures more, it is not another configuration: the two kd runs are one row
    assert table.loc["kd", "n"] == 2
    assert table.loc["kd", "student_latency_ms_mean"] == pytest.approx(0.3)
    assert table.loc["kd", "teacher_params"] == 5000

    rows = {row["method"]: row for row in _markdown_rows(format_markdown(table.reset_index()))}
    expected = {
        "student params": "100",
        "student FLOPs": "2,000",
        "latency ms": "0.300",
        "teacher params": "5,000",
    }
    assert rows["kd"] | expected == rows["kd"]
    assert rows["dkd"]["latency ms"] == "-"

    result = run_cli("report", str(runs), "--out", str(tmp_path / "report"))
    assert result.code == 0, result.err
    for figure in ("accuracy_vs_latency.png", "accuracy_vs_flops.png"):
        assert (tmp_path / "report" / figure).read_bytes()[:4] == b"\x89PNG"
    assert "latency ms" in result.out and "0.300" in result.out
