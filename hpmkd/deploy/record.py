"""What every run records for deployment: the student's contract (``deploy.json``, beside
``student.pt``) and the cost of student and teacher (results.json ``cost``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from hpmkd.data.splits import DataSplits
from hpmkd.deploy.contract import STUDENT_FILE, build_contract, write_contract
from hpmkd.deploy.cost import model_cost
from hpmkd.deploy.latency import measure
from hpmkd.engine.model_config import GIVEN_PREFIX, model_params
from hpmkd.engine.records import ModelRecord
from hpmkd.models import build_model

log = logging.getLogger("hpmkd")


def save_contract(cfg: DictConfig, data: DataSplits, out_dir: Path) -> Path:
    return write_contract(
        out_dir, build_contract(cfg.student.arch, model_params(cfg.student), data)
    )


def _build(node: DictConfig, data: DataSplits, given: Mapping[str, nn.Module]) -> nn.Module:
    arch = node.arch
    if arch in given or str(arch).startswith(GIVEN_PREFIX):
        return given[arch]
    shape = {"num_classes": data.num_classes, "input_shape": tuple(data.input_shape)}
    return build_model(arch, **shape, **model_params(node))


def _cost(model: nn.Module, data: DataSplits, bench: bool) -> dict[str, Any]:
    cost = model_cost(model, data.input_shape)
    if bench:
        model = model.eval()
        one = torch.zeros((1, *data.input_shape))
        batch = torch.zeros((64, *data.input_shape))
        with torch.no_grad():
            timed = measure(model, one, batch, 64)
        cost |= {
            "latency_ms": timed["p50_ms"],
            "latency_p95_ms": timed["p95_ms"],
            "throughput": timed["throughput"],
            "threads": torch.get_num_threads(),
        }
    return cost


def run_cost(
    cfg: DictConfig,
    data: DataSplits,
    teacher: ModelRecord | None,
    out_dir: Path,
    given: Mapping[str, nn.Module],
) -> dict[str, Any]:
    """``{student: {params, flops, size_bytes[, latency_ms...]}, teacher: {...} | None}``.

    FLOPs are counted on the architectures (weights do not change them); latency (eager, CPU,
    batch 1, this process's threads) only with ``bench=true``. A teacher that is no torch
    model of the config (an ensemble, a scikit-learn teacher) keeps its parameter count and
    the cost its record carries (``extra.cost``).
    """
    bench = bool(cfg.get("bench", False))
    student = _cost(_build(cfg.student, data, given), data, bench)
    if (out_dir / STUDENT_FILE).is_file():
        student["size_bytes"] = (out_dir / STUDENT_FILE).stat().st_size
    if teacher is None:
        return {"student": student, "teacher": None}
    node = cfg.get("teacher")
    recorded = teacher.extra.get("cost")  # a scikit-learn teacher measured its own
    torch_teacher = node is not None and node.get("arch") == teacher.arch and not recorded
    if torch_teacher and cfg.get("teachers") is None:
        try:
            teacher_cost = _cost(_build(node, data, given), data, bench)
        except Exception as err:  # noqa: BLE001 - a result already earned is not lost over it
            log.warning("cost: could not measure the teacher %s: %s", teacher.arch, err)
            teacher_cost = {"params": teacher.params}
    else:
        teacher_cost = {"params": teacher.params} | dict(recorded or {})
    return {"student": student, "teacher": teacher_cost}
