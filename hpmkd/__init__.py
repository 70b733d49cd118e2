"""hpmkd: knowledge distillation experiments.

``hpmkd.distill(...)``, ``hpmkd.fit(...)`` and ``hpmkd.load_student(...)`` are the Python API
(``hpmkd.api``, docs/api.md); they are imported on first use, so ``import hpmkd.cli`` stays free
of torch.
"""

from typing import Any

_API = ("Result", "distill", "fit", "load_student")


def __getattr__(name: str) -> Any:
    if name in _API:
        from hpmkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpmkd' has no attribute {name!r}")


__all__ = list(_API)
