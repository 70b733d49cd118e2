"""Distillation methods: one module per method, all behind the contract in ``base``."""

from hpmkd.methods import ce, kd  # noqa: F401  (registration)
from hpmkd.methods.base import METHODS, DistillMethod, ModelOutputs, build_method, register_method

__all__ = ["METHODS", "DistillMethod", "ModelOutputs", "build_method", "register_method"]
