"""User callbacks: the config's ``callbacks`` node (``conf/callbacks``), a dict of ``_target_``
nodes instantiated for the run's own fit, beside hpmkd's callbacks."""

from __future__ import annotations

from collections.abc import Mapping

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from hpmkd.errors import UserError


def user_callbacks(cfg: DictConfig) -> list[Callback]:
    """One instance of every callback under ``callbacks`` (a fresh one per call). Bad nodes are a
    one-line UserError, so ``config.validate`` calls this before anything trains."""
    if "callbacks" in (cfg.get("trainer") or {}):
        raise UserError(
            "trainer.callbacks is not read; add callbacks as _target_ nodes under `callbacks`, "
            "e.g. callbacks=early_stopping or +callbacks.<name>._target_=<class>"
        )
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        where = f"callbacks.{name}"
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise UserError(f"{where} needs a _target_ (a Lightning callback class)")
        try:
            callback = instantiate(node)
        except Exception as err:  # noqa: BLE001 - Hydra wraps import and argument errors alike
            reason = " ".join(str(err).split())
            raise UserError(f"{where}: cannot instantiate {node['_target_']}: {reason}") from None
        if not isinstance(callback, Callback):
            raise UserError(f"{where}: {node['_target_']} is not a Lightning Callback")
        callbacks.append(callback)
    return callbacks
