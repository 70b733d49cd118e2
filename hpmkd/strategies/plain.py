"""No teacher: the student learns from the labels alone (the CE baseline of every table)."""

from __future__ import annotations

from hpmkd.engine.context import RunContext
from hpmkd.engine.records import StrategyResult, model_record
from hpmkd.methods import build_method
from hpmkd.strategies.registry import register_strategy


@register_strategy("plain")
def run(ctx: RunContext) -> StrategyResult:
    ctx.seed()
    student = ctx.build(ctx.cfg.student)
    result = ctx.train_student(student, build_method({"name": "ce"}))
    record = model_record(
        "student", ctx.cfg.student.arch, student, val_acc=result.acc_best, test_acc=result.test_acc
    )
    return StrategyResult(student=record, fit=result)
