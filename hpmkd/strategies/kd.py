"""Single-teacher distillation with any method from the zoo (Hinton KD by default)."""

from __future__ import annotations

from omegaconf import OmegaConf

from hpmkd.methods import build_method
from hpmkd.strategies.context import RunContext, StrategyResult, model_record
from hpmkd.strategies.teacher import obtain_teacher


def run(ctx: RunContext) -> StrategyResult:
    teacher, teacher_record = obtain_teacher(ctx, ctx.cfg.teacher)
    method_cfg = OmegaConf.to_container(ctx.cfg.method, resolve=True)
    method = build_method(method_cfg)  # type: ignore[arg-type]
    ctx.seed()
    student = ctx.build(ctx.cfg.student)
    result = ctx.train(
        student, method, out_dir=ctx.out_dir, teacher=teacher, ckpt_path=ctx.ckpt_path
    )
    record = model_record(
        "student", ctx.cfg.student.arch, student, val_acc=result.acc_best, test_acc=result.test_acc
    )
    return StrategyResult(
        student=record,
        fit=result,
        extra_params=method.extra_parameters(),
        teacher=teacher_record,
        method=method_cfg,  # type: ignore[arg-type]
    )
