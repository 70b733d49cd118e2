"""The Progressive Distillation Chain (PDC, METHODS.md 2.2): ``+strategy=progressive``.

Greedy construction: the student is first distilled straight from the teacher; then, while the
chain is shorter than ``strategy.max_length``, the next intermediate (geometric-mean budget,
closest member of the student's family) is distilled from the models above it and the student is
distilled through it. The intermediate is kept if that student's validation accuracy beats the
best so far by at least ``strategy.epsilon`` points; the first one that does not ends the chain.
The run's student is the best student seen. Every model is stored (SOM), so a rerun or a resumed
run reuses each finished link and candidate student.

With one teacher and a single-teacher method each model distils from the one just above it. The
``hpmkd`` strategy passes ``combine`` to distil each from an ensemble of all models above it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.console import Console
from torch import nn

from hpmkd.engine.context import STUDENT_FILE, RunContext
from hpmkd.engine.ddp import is_global_zero
from hpmkd.engine.fit import FitResult
from hpmkd.engine.model_config import model_params
from hpmkd.engine.obtain import obtain_model, obtain_teacher
from hpmkd.engine.records import ModelRecord, StrategyResult
from hpmkd.errors import UserError
from hpmkd.hpm.chain import ChainRow, chain_table, next_member, save_chain
from hpmkd.io import write_atomic
from hpmkd.models import count_parameters
from hpmkd.models.family import Member, family_members
from hpmkd.strategies.registry import register_strategy

log = logging.getLogger("hpmkd")

Trained = tuple[nn.Module, ModelRecord]
# the models available so far (teachers, then kept links) -> the teacher the next model learns from
Combine = Callable[[Sequence[Trained]], Trained]


def last_model(available: Sequence[Trained]) -> Trained:
    return available[-1]


@dataclass
class Chain:
    student: Trained
    links: list[ModelRecord] = field(default_factory=list)
    rows: list[ChainRow] = field(default_factory=list)


def build_chain(
    ctx: RunContext,
    teachers: Sequence[Trained],
    method_cfg: dict[str, Any],
    *,
    epsilon: float,
    max_length: int,
    combine: Combine = last_model,
) -> Chain:
    """Grow the chain greedily; returns the best student and the table of every candidate."""
    if not len(ctx.data.y_val):
        raise UserError(
            "progressive distillation picks links on validation data; set data.val_fraction > 0"
        )
    student_cfg = ctx.cfg.student
    student_params = count_parameters(ctx.build(student_cfg))
    top_params = max(record.params for _, record in teachers)
    members = family_members(
        student_cfg.arch,
        model_params(student_cfg),
        num_classes=ctx.data.num_classes,
        input_shape=ctx.data.input_shape,
    )

    def row(record: ModelRecord, role: str, label: str, **kwargs: Any) -> ChainRow:
        ratio = top_params / record.params
        return ChainRow(role, label, record.params, ratio, record.test_acc, **kwargs)

    def distil(model_cfg: Any, role: str, available: Sequence[Trained]) -> Trained:
        return obtain_model(ctx, model_cfg, role, teacher=combine(available), method_cfg=method_cfg)

    rows = [row(r, r.role, r.arch, student_val=None, kept=True) for _, r in teachers]
    available = list(teachers)
    best = distil(student_cfg, "student_direct", available)
    best_val = _val(best[1])
    rows.append(
        row(
            best[1],
            "student (direct)",
            Member(student_cfg.arch, dict(student_cfg.params or {})).label,
            student_val=best_val,
            kept=True,
        )
    )
    links: list[ModelRecord] = []
    previous = top_params
    for k in range(1, max_length + 1):
        member = next_member(members, previous, student_params)
        if member is None:
            rows[-1].note = "no family member left between"
            break
        link = distil(OmegaConf.create(member.as_config()), f"link{k}", available)
        candidate = distil(student_cfg, f"student_link{k}", [*available, link])
        gain = _val(candidate[1]) - best_val
        kept = gain >= epsilon
        note = f"{gain:+.2f} pp"
        rows.append(
            row(
                link[1],
                f"link{k}",
                member.label,
                student_val=_val(candidate[1]),
                kept=kept,
                note=note,
            )
        )
        if not kept:
            break
        available.append(link)
        links.append(link[1])
        best, best_val, previous = candidate, _val(candidate[1]), link[1].params
    return Chain(student=best, links=links, rows=rows)


def chain_result(
    ctx: RunContext, chain: Chain, method_cfg: dict[str, Any], title: str, epsilon: float
) -> StrategyResult:
    """The run's result from a built chain: the best student, written as the run's student."""
    model, record = chain.student
    if is_global_zero():
        write_atomic(ctx.out_dir / STUDENT_FILE, lambda tmp: torch.save(model.state_dict(), tmp))
        Console().print(chain_table(chain.rows, title, epsilon))
        log.info("chain table: %s", save_chain(chain.rows, ctx.out_dir))
    if record.fit is None:
        raise RuntimeError(f"stored student {record.extra} has no training record")
    extra = {"chosen": record.role}
    student = ModelRecord(
        "student", record.arch, record.params, record.val_acc, record.test_acc, extra
    )
    return StrategyResult(
        student=student,
        fit=FitResult(**record.fit),
        extra_params=record.extra.get("extra_params", 0),
        method=method_cfg,
        intermediates=chain.links,
        details={"chain": [asdict(row) for row in chain.rows]},
    )


@register_strategy("progressive")
def run(ctx: RunContext) -> StrategyResult:
    strategy = ctx.cfg.strategy
    teacher = obtain_teacher(ctx, ctx.cfg.teacher)
    method_cfg = OmegaConf.to_container(ctx.cfg.method, resolve=True)
    chain = build_chain(
        ctx, [teacher], method_cfg, epsilon=strategy.epsilon, max_length=strategy.max_length
    )
    result = chain_result(
        ctx, chain, method_cfg, "progressive distillation chain", strategy.epsilon
    )
    result.teacher = teacher[1]
    return result


def _val(record: ModelRecord) -> float:
    assert record.val_acc is not None
    return record.val_acc
