"""The optional onnx extra: imported on demand, its absence one line naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from hpmkd.errors import UserError

EXTRA = "onnx"


def need(module: str, what: str) -> ModuleType:
    """``import module``, or a UserError saying that ``what`` needs hpmkd's onnx extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        from hpmkd.config import needs_extra

        raise UserError(needs_extra(f"{what} ({module} is not installed)", EXTRA)) from None
