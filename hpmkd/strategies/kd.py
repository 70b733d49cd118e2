"""Single-teacher distillation with any method from the zoo (Hinton KD by default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch import nn

from hpmkd.engine.context import RunContext
from hpmkd.engine.obtain import obtain_teacher, teacher_identity
from hpmkd.engine.records import StrategyResult, model_record
from hpmkd.engine.tabular_teacher import refuse_feature_method
from hpmkd.methods import DistillMethod, build_method
from hpmkd.strategies.registry import register_strategy


def distil_student(
    ctx: RunContext,
    teacher: nn.Module,
    method_cfg: dict[str, Any],
    make_method: Callable[[nn.Module], DistillMethod] | None = None,
    callbacks: Sequence[Callback] = (),
    teacher_id: Any = None,
) -> StrategyResult:
    """Distil the run's student from ``teacher`` (seeded like a plain run).

    The method is ``build_method(method_cfg)``, or ``make_method(student)`` for methods that
    need the student itself (SMSKD's reference copy).
    """
    ctx.seed()
    student = ctx.build(ctx.cfg.student)
    if make_method is not None:
        method = make_method(student)
    else:
        method = ctx.given_method or build_method(method_cfg)
    refuse_feature_method(teacher, method)
    result = ctx.train_student(
        student, method, teacher=teacher, teacher_id=teacher_id, callbacks=callbacks
    )
    record = model_record(
        "student", ctx.cfg.student.arch, student, val_acc=result.acc_best, test_acc=result.test_acc
    )
    return StrategyResult(
        student=record, fit=result, extra_params=method.extra_parameters(), method=method_cfg
    )


@register_strategy("kd")
def run(ctx: RunContext) -> StrategyResult:
    method_cfg = OmegaConf.to_container(ctx.cfg.method, resolve=True)
    refuse_feature_method(ctx.cfg.teacher.arch, ctx.given_method or build_method(method_cfg))
    teacher, teacher_record = obtain_teacher(ctx, ctx.cfg.teacher)
    result = distil_student(
        ctx,
        teacher,
        method_cfg,
        teacher_id=teacher_identity(teacher_record),  # type: ignore[arg-type]
    )
    result.teacher = teacher_record
    return result
