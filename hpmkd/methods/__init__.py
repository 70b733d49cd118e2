"""Distillation methods: one module per method, all behind the contract in ``base``.

Every module of this package is imported here, so a new method file registers itself.
"""

import importlib
import pkgutil

from hpmkd.methods.base import (
    METHODS,
    DistillMethod,
    MethodSetup,
    ModelOutputs,
    build_method,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "DistillMethod",
    "MethodSetup",
    "ModelOutputs",
    "build_method",
    "register_method",
]
