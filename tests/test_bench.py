"""hpmkd bench on tiny models: the table and bench.json are produced (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpmkd.data.splits import DataSplits
from hpmkd.deploy.contract import STUDENT_FILE, build_contract, write_contract
from hpmkd.io import write_json_atomic
from hpmkd.models import build_model

pytest.importorskip("onnxruntime")

FAST = ["--repeats", "3", "--batch", "4", "--threads", "1"]


def _run(tmp_path: Path, teacher_extra: dict) -> Path:
    """A hand-made finished run: an MLP student of 6-feature rows and an MLP teacher."""
    x, y = torch.randn(20, 6), torch.arange(20) % 3
    data = DataSplits(
        name="rows", x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], x_test=x, y_test=y,
        num_classes=3, class_names=["a", "b", "c"], input_shape=(6,), is_image=False,
    )  # fmt: skip
    student = build_model("mlp_small", num_classes=3, input_shape=(6,))
    run = tmp_path / "run"
    run.mkdir()
    torch.save(student.state_dict(), run / STUDENT_FILE)
    write_contract(run, build_contract("mlp_small", {}, data))
    teacher = {"role": "teacher", "arch": "mlp", "params": 1, "extra": teacher_extra}
    config = {"teacher": {"arch": "mlp", "params": {}}, "teachers": None,
              "store": {"root": str(tmp_path / "store")}}  # fmt: skip
    write_json_atomic(run / "results.json", {"teacher": teacher, "config": config})
    return run


def test_bench_times_student_and_teacher_on_each_runtime(tmp_path: Path, run_cli) -> None:
    run = _run(tmp_path, {"source": "trained", "store_key": "absent"})
    result = run_cli("bench", str(run), *FAST, "--runtimes", "eager,onnx,torchscript")
    assert result.code == 0, result.err
    record = json.loads((run / "bench.json").read_text())
    assert [(r["model"], r["runtime"]) for r in record["rows"]] == [
        (m, r) for m in ("student", "teacher") for r in ("eager", "onnx", "torchscript")
    ]
    assert all(r["p50_ms"] > 0 and r["throughput"] > 0 and r["flops"] > 0 for r in record["rows"])
    assert record["threads"] == 1 and record["machine"]
    assert "hpmkd bench" in result.out and "onnxruntime" in result.out and "x" in result.out


def test_bench_shows_a_scikit_learn_teachers_recorded_cost(tmp_path: Path, run_cli) -> None:
    cost = {"kind": "sklearn", "size_bytes": 12000, "nodes": 345, "predict_ms_per_1000": 1.5,
            "fit_s": 0.2}  # fmt: skip
    run = _run(tmp_path, {"source": "trained", "cost": cost})
    config = json.loads((run / "results.json").read_text())
    config["config"]["teacher"]["arch"] = "sklearn:random_forest"
    config["teacher"]["arch"] = "sklearn:random_forest"
    write_json_atomic(run / "results.json", config)
    result = run_cli("bench", str(run), *FAST, "--runtimes", "eager")
    assert result.code == 0, result.err
    record = json.loads((run / "bench.json").read_text())
    assert [r["model"] for r in record["rows"]] == ["student"]
    assert record["teacher_cost"] == cost
    assert "345 nodes" in result.out and "1.500/1000" in result.out


def test_bench_a_zoo_model_by_name(run_cli) -> None:
    result = run_cli("bench", "resnet8", *FAST, "--runtimes", "eager,exported")
    assert result.code == 0, result.err
    assert "torch.export" in result.out


def test_bench_refuses_bad_input_in_one_line(tmp_path: Path, run_cli) -> None:
    result = run_cli("bench", str(tmp_path), "--runtimes", "eager")
    assert result.code == 2 and "not a finished hpmkd run directory" in result.err
    result = run_cli("bench", "resnet8", "--runtimes", "tflite")
    assert result.code == 2 and "unknown runtime 'tflite'" in result.err
