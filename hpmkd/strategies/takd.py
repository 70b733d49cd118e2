"""Teacher-assistant KD (Mirzadeh et al. 2020): teacher -> assistant -> student.

Two chained distillations with the same method: the assistant (``assistant=<model>``) is
distilled from the teacher and stored, then the student is distilled from the assistant.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from hpmkd.engine.context import RunContext
from hpmkd.engine.obtain import obtain_model, obtain_teacher, teacher_identity
from hpmkd.engine.records import StrategyResult
from hpmkd.strategies.kd import distil_student
from hpmkd.strategies.registry import register_strategy


@register_strategy("takd")
def run(ctx: RunContext) -> StrategyResult:
    teacher = obtain_teacher(ctx, ctx.cfg.teacher)
    method_cfg = OmegaConf.to_container(ctx.cfg.method, resolve=True)
    assistant = obtain_model(
        ctx, ctx.cfg.assistant, "assistant", teacher=teacher, method_cfg=method_cfg
    )
    assistant_id = teacher_identity(assistant[1])
    result = distil_student(ctx, assistant[0], method_cfg, teacher_id=assistant_id)
    result.teacher = teacher[1]
    result.intermediates = [assistant[1]]
    return result
