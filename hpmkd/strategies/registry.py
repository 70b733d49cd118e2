"""Name -> strategy registry: a strategy module registers its entry points with a decorator,
as methods (``register_method``) and models (``register_model``) do."""

from __future__ import annotations

from collections.abc import Callable

from hpmkd.engine.context import RunContext
from hpmkd.engine.records import StrategyResult
from hpmkd.errors import unknown_name

Strategy = Callable[[RunContext], StrategyResult]

STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator registering ``run(ctx) -> StrategyResult`` as ``+strategy=<name>``."""

    def decorator(run: Strategy) -> Strategy:
        if name in STRATEGIES:
            raise ValueError(f"strategy '{name}' is registered twice")
        STRATEGIES[name] = run
        return run

    return decorator


def run_strategy(name: str, ctx: RunContext) -> StrategyResult:
    if name not in STRATEGIES:
        raise unknown_name("strategy", name, list(STRATEGIES))
    return STRATEGIES[name](ctx)
