"""hpmkd export: raw inputs in, PyTorch's probabilities out (ONNX, TorchScript), for a tabular
MLP trained by a run and a CIFAR ResNet; the model card; runs that predate deploy.json; the
onnx extra missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpmkd.data.splits import DataSplits
from hpmkd.deploy.contract import CONTRACT_FILE, STUDENT_FILE, build_contract, write_contract
from hpmkd.deploy.export import loader
from hpmkd.deploy.quantize import quantize_static
from hpmkd.deploy.wrapper import Deployable
from hpmkd.io import write_json_atomic
from hpmkd.models import build_model
from tests.conftest import TINY

pytest.importorskip("onnxruntime")


def _table(path: Path) -> Path:
    """Raw numbers far from standardised (means in the hundreds), one categorical column."""
    rng = np.random.default_rng(0)
    n = 240
    label = rng.integers(0, 3, n)
    frame = pd.DataFrame(
        {
            "size": 300 + 50 * label + rng.normal(0, 20, n),
            "weight": 0.01 * rng.normal(0, 1, n) - 0.02 * label,
            "colour": rng.choice(["red", "blue"], n),
            "target": np.array(["a", "b", "c"])[label],
        }
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def tabular_run(run_cli, hpmkd_env: Path) -> Path:
    table = _table(hpmkd_env / "table.csv")
    run = run_cli(
        "train", "data=csv", f"data.path={table}", "hydra.run.dir=${paths.output_root}/t",
        "bench=true", *TINY,
    )  # fmt: skip
    assert run.code == 0, run.err
    return run.outputs / "t"


def test_tabular_student_takes_raw_rows_in_onnx_and_torchscript(tabular_run: Path, run_cli) -> None:
    export = run_cli(
        "export",
        str(tabular_run),
        "--format",
        "onnx,torchscript",
        "--check-test",
        "--quantize",
        "dynamic",
    )
    assert export.code == 0, export.err
    out = tabular_run / "export"
    record = json.loads((out / "export.json").read_text())
    assert record["checked_on"] == "rows of the test split"
    assert {f: e["max_diff"] <= 1e-4 for f, e in record["files"].items()} == {
        "onnx": True,
        "torchscript": True,
    }

    # the raw-row contract, checked without hpmkd's inverse: every test row the run trained on,
    # mapped back with the recorded mean and scale, is a row of the CSV as written
    contract = json.loads((tabular_run / CONTRACT_FILE).read_text())
    table = contract["input"]["transform"]
    assert table["columns"] == ["size", "weight"] and list(table["categorical"]) == ["colour"]
    from hpmkd.data import load_data

    results = json.loads((tabular_run / "results.json").read_text())
    from omegaconf import OmegaConf

    data = load_data(OmegaConf.create(results["config"]["data"]))
    csv = pd.read_csv(tabular_run.parent.parent / "table.csv")[["size", "weight"]].to_numpy()
    encoded = data.x_test
    raw_numeric = encoded[:, :2].numpy() * np.array(table["scale"]) + np.array(table["mean"])
    distance = np.abs(raw_numeric[:, None, :] - csv[None, :, :]).max(axis=2).min(axis=1)
    assert distance.max() < 1e-4 * np.abs(csv).max()
    raw = torch.cat([torch.from_numpy(raw_numeric).float(), encoded[:, 2:]], dim=1)
    student = build_model(contract["arch"], num_classes=3, input_shape=(4,), **contract["params"])
    student.load_state_dict(torch.load(tabular_run / STUDENT_FILE, weights_only=True))
    with torch.no_grad():
        expected = torch.softmax(student.eval()(encoded), dim=1).numpy()
    for fmt, name in (("onnx", "student.onnx"), ("torchscript", "student.ts")):
        assert np.abs(loader(fmt, out / name)(raw) - expected).max() < 1e-4

    # a missing value reads as the training median
    row = raw[:1].clone()
    row[0, 0] = float("nan")
    filled = raw[:1].clone()
    filled[0, 0] = table["median"][0]
    run = loader("onnx", out / "student.onnx")
    assert np.allclose(run(row), run(filled), atol=1e-6)

    card = (out / "model_card.md").read_text()
    for field in (
        "| data | table (172 train",
        "| classes | 3: a, b, c",
        "| teacher | none",
        f"| test accuracy % | {results['test_acc']:.2f}",
        "| parameters |",
        "| FLOPs per sample |",
        "raw table rows",
        "dynamic int8",
    ):
        assert field in card
    assert results["cost"]["student"]["params"] == results["student"]["params"]
    assert results["cost"]["student"]["flops"] > 0 and results["cost"]["teacher"] is None
    assert results["cost"]["student"]["latency_ms"] > 0  # bench=true


def _cifar_run(tmp_path: Path) -> tuple[Path, DataSplits, torch.nn.Module]:
    """A hand-made run directory: a CIFAR ResNet-8 student of random 32x32 uint8 images."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(48) % 10
    data = DataSplits(
        name="tiny_cifar",
        x_train=images[:32],
        y_train=labels[:32],
        x_val=images[:0],
        y_val=labels[:0],
        x_test=images[32:],
        y_test=labels[32:],
        num_classes=10,
        class_names=[f"c{i}" for i in range(10)],
        input_shape=(3, 32, 32),
        is_image=True,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
    )
    model = build_model("resnet8", num_classes=10, input_shape=(3, 32, 32)).eval()
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / STUDENT_FILE)
    write_contract(run, build_contract("resnet8", {}, data))
    results = {
        "data": data.summary(),
        "teacher": None,
        "strategy": "plain",
        "method": "ce",
        "test_acc": 10.0,
        "teacher_acc": None,
        "student": {"params": 1},
        "config": {},
    }
    write_json_atomic(run / "results.json", results)
    return run, data, model


def test_cifar_resnet_takes_uint8_images(tmp_path: Path, run_cli) -> None:
    run, data, model = _cifar_run(tmp_path)
    export = run_cli("export", str(run), "--format", "onnx,torchscript")
    assert export.code == 0, export.err
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model((data.x_test.float() / 255 - mean) / std), dim=1).numpy()
    for fmt, name in (("onnx", "student.onnx"), ("torchscript", "student.ts")):
        got = loader(fmt, run / "export" / name)(data.x_test)
        assert np.abs(got - expected).max() < 1e-4
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "student.onnx")).metadata_props}
    assert json.loads(meta["hpmkd"])["class_names"][:2] == ["c0", "c1"]
    assert "uint8 images, N x 3x32x32" in (run / "export" / "model_card.md").read_text()

    # static int8 through onnxruntime, calibrated on training images: smaller, still a softmax
    int8 = quantize_static(run / "export" / "student.onnx", data.x_train, tmp_path / "q.onnx")
    probs = loader("onnx", int8)(data.x_test)
    assert probs.shape == (16, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    assert int8.stat().st_size < (run / "export" / "student.onnx").stat().st_size


def test_a_run_before_deploy_json_is_refused_in_one_line(tmp_path: Path, run_cli) -> None:
    run, _, _ = _cifar_run(tmp_path)
    (run / CONTRACT_FILE).unlink()
    result = run_cli("export", str(run))
    assert result.code == 2
    assert result.err.count("\n") == 1 and "predates" in result.err


def test_without_the_onnx_extra_export_names_it(tmp_path: Path) -> None:
    run, _, _ = _cifar_run(tmp_path)
    code = (
        "import sys; sys.modules['onnx'] = None; from hpmkd.cli import main; "
        f"main(['export', {str(run)!r}, '--format', 'onnx'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("hpmkd: error: ") and done.stderr.count("\n") == 1
    assert "hpmkd[onnx]" in done.stderr


def test_deployable_reads_nan_table_cells_as_the_median() -> None:
    model = torch.nn.Linear(2, 2)
    contract = {
        "class_names": ["a", "b"],
        "input": {
            "kind": "table",
            "transform": {"median": [5.0, 1.0], "mean": [4.0, 0.0], "scale": [2.0, 1.0]},
        },
    }
    wrapped = Deployable(model, contract)
    with torch.no_grad():
        got = wrapped(torch.tensor([[float("nan"), 3.0]]))
        expected = torch.softmax(model(torch.tensor([[0.5, 3.0]])), dim=1)
    assert torch.allclose(got, expected)
