"""What a deployed student needs besides its weights, saved beside ``student.pt`` by every run:
architecture, classes, and how raw inputs became the tensors it was trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError
from hpmkd.io import write_json_atomic

if TYPE_CHECKING:
    from hpmkd.data.stream import StreamSplits

CONTRACT_FILE = "deploy.json"
STUDENT_FILE = "student.pt"  # as engine.context writes it (not imported: it pulls in Lightning)
CONTRACT_VERSION = 1


def input_contract(data: DataSplits | StreamSplits) -> dict[str, Any]:
    """Images: uint8 NCHW, ``(x / 255 - mean) / std`` per channel; tables: the training split's
    preprocessing (``DataSplits.table_transform``), or none for data given as float tensors."""
    if data.is_image:
        return {
            "kind": "image",
            "mean": list(data.mean or (0.0,)),
            "std": list(data.std or (1.0,)),
        }
    return {"kind": "table", "transform": getattr(data, "table_transform", None)}


def build_contract(
    arch: str, params: dict[str, Any], data: DataSplits | StreamSplits
) -> dict[str, Any]:
    return {
        "version": CONTRACT_VERSION,
        "arch": arch,
        "params": params,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "input_shape": list(data.input_shape),
        "data": data.name,
        "input": input_contract(data),
    }


def write_contract(out_dir: Path, contract: dict[str, Any]) -> Path:
    path = out_dir / CONTRACT_FILE
    write_json_atomic(path, contract)
    return path


def read_contract(run_dir: Path) -> dict[str, Any]:
    """The run's contract; a UserError for a directory that is no finished run, or a run
    made before runs saved it."""
    if not (run_dir / STUDENT_FILE).is_file():
        raise UserError(f"{run_dir} holds no {STUDENT_FILE}: not a finished hpmkd run directory")
    path = run_dir / CONTRACT_FILE
    if not path.is_file():
        raise UserError(
            f"{run_dir} predates deployable runs (no {CONTRACT_FILE} beside {STUDENT_FILE}); "
            "train it again to export it"
        )
    return json.loads(path.read_text())
