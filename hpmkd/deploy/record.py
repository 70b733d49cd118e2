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
from hpmkd.deploy.latency import measure_interleaved
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


def _latency(models: list[nn.Module], data: DataSplits) -> list[dict[str, Any]]:
    """Eager CPU latency at batch 1 and throughput at 64 of each model, timed in turn."""
    one = torch.zeros((1, *data.input_shape))
    batch = torch.zeros((64, *data.input_shape))
    runs = [torch.no_grad()(model.eval()) for model in models]
    timed = measure_interleaved(runs, one, batch, 64)
    return [
        {
            "latency_ms": t["p50_ms"],
            "latency_p95_ms": t["p95_ms"],
            "throughput": t["throughput"],
            "threads": torch.get_num_threads(),
        }
        for t in timed
    ]


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
    student_model = _build(cfg.student, data, given)
    student = model_cost(student_model, data.input_shape)
    if (out_dir / STUDENT_FILE).is_file():
        student["size_bytes"] = (out_dir / STUDENT_FILE).stat().st_size
    models, costs = [student_model], [student]
    teacher_cost = None
    if teacher is not None:
        node = cfg.get("teacher")
        recorded = teacher.extra.get("cost")  # a scikit-learn teacher measured its own
        torch_teacher = node is not None and node.get("arch") == teacher.arch and not recorded
        teacher_cost = {"params": teacher.params} | dict(recorded or {})
        if torch_teacher and cfg.get("teachers") is None:
            try:
                teacher_model = _build(node, data, given)
                teacher_cost = model_cost(teacher_model, data.input_shape)
                models.append(teacher_model)
                costs.append(teacher_cost)
            except Exception as err:  # noqa: BLE001 - a result already earned is not lost over it
                log.warning("cost: could not measure the teacher %s: %s", teacher.arch, err)
    if cfg.get("bench", False):
        for cost, timed in zip(costs, _latency(models, data), strict=True):
            cost |= timed
    return {"student": student, "teacher": teacher_cost}
