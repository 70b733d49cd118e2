"""``hpmkd export``: a run's student as deployable files, checked, with a model card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpmkd.deploy.bench import read_bench
from hpmkd.deploy.card import write_card
from hpmkd.deploy.evaluation import accuracy, run_data, run_results, split_inputs
from hpmkd.deploy.export import FORMATS, export, loader
from hpmkd.deploy.quantize import quantize_dynamic, quantize_static
from hpmkd.deploy.wrapper import Deployable, example_inputs, load_deployable
from hpmkd.errors import UserError
from hpmkd.io import write_json_atomic

log = logging.getLogger("hpmkd")

EXPORT_FILE = "export.json"
TOLERANCE = 1e-4  # largest difference to PyTorch's probabilities an exported file may show


def eager(model: Deployable) -> Any:
    def predict(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model(x).numpy()

    return predict


def _max_difference(model: Deployable, fmt: str, path: Path, x: torch.Tensor) -> float:
    reference = eager(model)(x)
    return float(np.abs(loader(fmt, path)(x) - reference).max())


def export_run(
    run_dir: Path,
    formats: list[str],
    quantize: str = "none",
    out_dir: Path | None = None,
    check_rows: int = 64,
    use_data: bool = False,
) -> dict[str, Any]:
    """Write each format (``<out>/student.<suffix>``), check it against the eager model on
    ``check_rows`` raw inputs, quantise if asked (accuracy before and after on the test split),
    then ``export.json`` and ``model_card.md``. The data is loaded again only to quantise or
    when ``use_data``: the check then runs on the test split's first rows, else on random
    inputs of the contract."""
    out_dir = out_dir or run_dir / "export"
    results = run_results(run_dir)
    model, contract = load_deployable(run_dir)
    data = run_data(results) if quantize != "none" or use_data else None
    check = (
        split_inputs(contract, data, "test")[:check_rows]
        if data is not None
        else example_inputs(contract, check_rows)
    )
    metadata = {
        "class_names": contract["class_names"],
        "input": contract["input"],
        "arch": contract["arch"],
        "data": contract["data"],
    }
    files: dict[str, Any] = {}
    for fmt in formats:
        path = export(model, check[:2], out_dir / "student", fmt, metadata)
        difference = _max_difference(model, fmt, path, check)
        if difference > TOLERANCE:
            log.warning("%s: probabilities differ from PyTorch's by %.2g", path.name, difference)
        files[fmt] = {"path": path.name, "bytes": path.stat().st_size, "max_diff": difference}
        log.info("exported %s (max difference to PyTorch %.2g)", path, difference)
    quantized = None
    if quantize != "none":
        quantized = _quantize(model, contract, data, quantize, files, out_dir, metadata)
    record = {
        "run": str(run_dir),
        "files": files,
        "quantized": quantized,
        "check_rows": len(check),
        "checked_on": "rows of the test split" if data else "random raw inputs",
    }
    write_json_atomic(out_dir / EXPORT_FILE, record)
    card = write_card(out_dir, results, contract, record, bench=read_bench(run_dir))
    return record | {"card": str(card), "out_dir": str(out_dir)}


def _quantize(
    model: Deployable,
    contract: dict[str, Any],
    data: Any,
    mode: str,
    files: dict[str, Any],
    out_dir: Path,
    metadata: dict,
) -> dict[str, Any]:
    x_test, y_test = split_inputs(contract, data, "test"), data.y_test
    before = accuracy(eager(model), x_test, y_test)
    if mode == "dynamic":
        path = quantize_dynamic(model, x_test[:2], out_dir / "student.int8.ts", metadata)
        predict = loader("torchscript", path)
    else:
        if "onnx" not in files:
            raise UserError("--quantize static works on the ONNX file: add --format onnx (or all)")
        calibration = split_inputs(contract, data, "train")
        path = quantize_static(
            out_dir / files["onnx"]["path"], calibration, out_dir / "student.int8.onnx"
        )
        predict = loader("onnx", path)
    after = accuracy(predict, x_test, y_test)
    log.info("int8 (%s): test accuracy %.2f %% -> %.2f %%", mode, before, after)
    return {
        "mode": mode,
        "path": path.name,
        "bytes": path.stat().st_size,
        "acc_before": before,
        "acc_after": after,
        "test_rows": len(y_test),
    }


def parse_formats(value: str) -> list[str]:
    if value == "all":
        return list(FORMATS)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise UserError(f"unknown export format '{value}'; valid: {', '.join(FORMATS)}, all")
    return names
