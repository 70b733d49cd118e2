"""Single-teacher distillation with any method from the zoo (Hinton KD by default)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from torch import nn

from hpmkd.methods import build_method
from hpmkd.strategies.context import RunContext, StrategyResult, model_record
from hpmkd.strategies.teacher import obtain_teacher


def distil_student(
    ctx: RunContext, teacher: nn.Module, method_cfg: dict[str, Any]
) -> StrategyResult:
    """Distil the run's student from ``teacher`` with ``method_cfg`` (seeded like a plain run)."""
    method = build_method(method_cfg)
    ctx.seed()
    student = ctx.build(ctx.cfg.student)
    result = ctx.train(
        student, method, out_dir=ctx.out_dir, teacher=teacher, ckpt_path=ctx.ckpt_path
    )
    record = model_record(
        "student", ctx.cfg.student.arch, student, val_acc=result.acc_best, test_acc=result.test_acc
    )
    return StrategyResult(
        student=record, fit=result, extra_params=method.extra_parameters(), method=method_cfg
    )


def run(ctx: RunContext) -> StrategyResult:
    teacher, teacher_record = obtain_teacher(ctx, ctx.cfg.teacher)
    result = distil_student(ctx, teacher, OmegaConf.to_container(ctx.cfg.method, resolve=True))  # type: ignore[arg-type]
    result.teacher = teacher_record
    return result
