"""Strategies decide which engine runs happen and in what order; one small module each.

Every module of this package is imported here, so a new strategy file registers itself.
"""

import importlib
import pkgutil

from hpmkd.strategies.registry import STRATEGIES, register_strategy, run_strategy

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "register_strategy", "run_strategy"]
