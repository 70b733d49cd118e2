"""Strategies decide which engine runs happen and in what order; one small module each."""

from __future__ import annotations

from collections.abc import Callable

from hpmkd.errors import unknown_name
from hpmkd.strategies import hpmkd, kd, multi_teacher, plain, progressive, smskd, takd
from hpmkd.strategies.context import RunContext, StrategyResult

STRATEGIES: dict[str, Callable[[RunContext], StrategyResult]] = {
    "plain": plain.run,
    "kd": kd.run,
    "takd": takd.run,
    "smskd": smskd.run,
    "aggregate": smskd.run_aggregate,
    "progressive": progressive.run,
    "multi_teacher": multi_teacher.run,
    "hpmkd": hpmkd.run,
}


def run_strategy(name: str, ctx: RunContext) -> StrategyResult:
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, list(STRATEGIES))
    return STRATEGIES[name](ctx)


__all__ = ["STRATEGIES", "RunContext", "StrategyResult", "run_strategy"]
