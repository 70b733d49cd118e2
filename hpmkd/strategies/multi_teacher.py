"""Several teachers behind one ensemble (AWMT, METHODS.md 2.3): ``+strategy=multi_teacher``.

``teachers=[...]`` lists the teachers: model names (``[resnet56, resnet32]``) or model nodes
(``[{arch: mlp_large, seed: 1}, mlp]``) with the keys of ``teacher=``. Each is obtained like the
single teacher (checkpoint, store or trained); teachers that must be trained are trained
concurrently by the parallel pipeline when ``strategy.parallel`` is on. The student learns from
their ``TeacherEnsemble`` with the ``multi_teacher`` method (``method.weighting=uniform`` is the
plain-average baseline).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpmkd.data import load_data
from hpmkd.engine.context import RunContext
from hpmkd.engine.evaluate import accuracy
from hpmkd.engine.journal import JOURNAL_FILE, Journal
from hpmkd.engine.model_config import teacher_configs
from hpmkd.engine.obtain import model_spec, obtain_model, teacher_identity
from hpmkd.engine.records import ModelRecord, StrategyResult
from hpmkd.methods import DistillMethod, build_method
from hpmkd.methods.multi_teacher import MultiTeacher, split_weights
from hpmkd.models.ensemble import TeacherEnsemble
from hpmkd.models.sklearn_teacher import names_classifier
from hpmkd.parallel import Job, run_jobs
from hpmkd.store import ArtifactStore, content_key
from hpmkd.strategies.kd import distil_student
from hpmkd.strategies.registry import register_strategy

log = logging.getLogger("hpmkd")

Trained = tuple[nn.Module, ModelRecord]


def train_model_job(
    config: dict[str, Any], model_cfg: dict[str, Any], role: str, segment: int | None = None
) -> str | None:
    """A parallel-pipeline job: obtain (train and store) one model in a child process, writing
    to the parent's journal segment."""
    cfg = OmegaConf.create(config)
    out_dir = Path(cfg.paths.output_dir)
    journal = None if segment is None else Journal(out_dir / JOURNAL_FILE, segment)
    ctx = RunContext(
        cfg, out_dir, load_data(cfg.data), ArtifactStore(cfg.store.root), journal=journal
    )
    _, record = obtain_model(ctx, OmegaConf.create(model_cfg), role)
    return record.extra.get("store_key")


def train_missing_concurrently(ctx: RunContext, configs: Sequence[DictConfig]) -> None:
    """Train the teachers that are not stored yet at the same time (PPP); the caller then
    finds them in the store. A failed job is logged; obtaining that teacher again in this
    process then reports its error."""
    missing = [
        (k, c)
        for k, c in enumerate(configs)
        if not c.checkpoint
        and not names_classifier(c.arch)  # soft labels, fitted in this process
        and ctx.store.get(content_key("model", model_spec(ctx, c))) is None
    ]
    if len(missing) < 2:
        return
    config = OmegaConf.to_container(ctx.cfg, resolve=True)
    segment = ctx.journal.segment if ctx.journal is not None else None
    jobs = [
        Job(
            f"teacher{k}",
            train_model_job,
            (config, OmegaConf.to_container(c), f"teacher{k}", segment),
        )
        for k, c in missing
    ]
    log.info("parallel pipeline: training %d teachers at once", len(jobs))
    for result in run_jobs(jobs):
        if not result.ok:
            log.warning("%s failed in the parallel pipeline: %s", result.name, result.error)


def obtain_teachers(ctx: RunContext, *, parallel: bool) -> list[Trained]:
    configs = teacher_configs(ctx.cfg)
    if parallel:
        train_missing_concurrently(ctx, configs)
    roles = ["teacher"] if len(configs) == 1 else [f"teacher{k}" for k in range(len(configs))]
    return [obtain_model(ctx, c, role) for c, role in zip(configs, roles, strict=True)]


def ensemble_of(ctx: RunContext, models: Sequence[Trained], *, concurrent: bool) -> Trained:
    """The teachers as one ``TeacherEnsemble`` and its record (identified by its members)."""
    ensemble = TeacherEnsemble([m for m, _ in models], concurrent=concurrent)
    data = ctx.data
    record = ModelRecord(
        role="ensemble",
        arch=ensemble.model_name,
        params=sum(r.params for _, r in models),
        val_acc=accuracy(ensemble, data.x_val, data.y_val, ctx.transform, device=ctx.device),
        test_acc=accuracy(ensemble, data.x_test, data.y_test, ctx.transform, device=ctx.device),
        extra={"members": [teacher_identity(r) for _, r in models]},
    )
    return ensemble.eval().requires_grad_(False), record


@register_strategy("multi_teacher")
def run(ctx: RunContext) -> StrategyResult:
    parallel = ctx.cfg.strategy.parallel
    teachers = obtain_teachers(ctx, parallel=parallel)
    teacher, record = ensemble_of(ctx, teachers, concurrent=parallel)
    method_cfg = OmegaConf.to_container(ctx.cfg.method, resolve=True)
    built: list[tuple[nn.Module, DistillMethod]] = []

    def make_method(student: nn.Module) -> DistillMethod:
        built.append((student, ctx.given_method or build_method(method_cfg)))  # type: ignore[arg-type]
        return built[-1][1]

    result = distil_student(ctx, teacher, method_cfg, make_method)  # type: ignore[arg-type]
    result.teacher = record
    result.details = {"teachers": [asdict(r) for _, r in teachers]}
    student, method = built[-1]
    if isinstance(method, MultiTeacher) and len(ctx.data.y_test):
        weights = split_weights(method, teacher, student, ctx.data.x_test, ctx.transform)
        log.info("attention weights over the test split (per teacher): %s", weights)
        result.details["attention_test"] = weights
    return result
