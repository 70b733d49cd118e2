"""Temperature schedules, HPM-KD's Meta-learned Temperature Scheduler among them (METHODS.md 2.4).

``temperature=<kind>`` works with any method that has a temperature (KD, DKD, DIST, the
multi-teacher ensemble...). The schedule sets ``method.temperature`` at the start of each epoch:

- ``constant``: T0.
- ``linear``: from T0 at the first epoch to ``t_end`` at the last.
- ``cosine``: from T0 to ``t_end`` along half a cosine.
- ``mts``: ``clip(T0 * (1 + gamma * |L(t-1) - L(t-2)| / L(t-2)), t_min, t_max)``, where L is the
  epoch mean of the distillation loss (every loss term except the labels' ``ce``) of the last two
  finished epochs; T0 until two epochs have finished. A loss that still moves a lot raises the
  temperature (softer targets); once it settles the temperature returns to T0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from hpmkd.errors import UserError, unknown_name

KINDS = ("constant", "linear", "cosine", "mts")


def temperature_at(
    kind: str,
    epoch: int,
    epochs: int,
    losses: Sequence[float],
    *,
    t0: float = 4.0,
    t_end: float = 2.0,
    gamma: float = 1.0,
    t_min: float = 2.0,
    t_max: float = 6.0,
) -> float:
    """The temperature of ``epoch`` (0-based) of ``epochs``, given the finished epochs' losses."""
    progress = epoch / (epochs - 1) if epochs > 1 else 1.0
    if kind == "constant":
        return t0
    if kind == "linear":
        return t0 + (t_end - t0) * progress
    if kind == "cosine":
        return t_end + (t0 - t_end) * (1 + math.cos(math.pi * progress)) / 2
    if kind == "mts":
        if len(losses) < 2 or losses[-2] == 0:
            return t0
        change = abs(losses[-1] - losses[-2]) / abs(losses[-2])
        return min(max(t0 * (1 + gamma * change), t_min), t_max)
    raise unknown_name("temperature schedule", kind, list(KINDS))


def distillation_loss(loss_terms: dict[str, float]) -> float:
    """The epoch-mean distillation loss: every weighted term but the labels' cross-entropy."""
    return sum(value for term, value in loss_terms.items() if term != "ce")


class TemperatureSchedule(Callback):
    """Sets the method's temperature each epoch and logs it as ``train/temperature`` (the
    per-epoch values also reach results.json through ``EpochHistory``). Checkpointed, so a
    resumed run continues the same schedule."""

    def __init__(self, kind: str, epochs: int, **params: float) -> None:
        if kind not in KINDS:
            raise unknown_name("temperature schedule", kind, list(KINDS))
        self.kind, self.epochs, self.params = kind, epochs, params
        self.losses: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        method = pl_module.method  # type: ignore[attr-defined]
        if not hasattr(method, "temperature"):
            raise UserError(f"temperature={self.kind}: method '{method.name}' has no temperature")
        value = temperature_at(
            self.kind, trainer.current_epoch, self.epochs, self.losses, **self.params
        )
        method.temperature = value

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        terms = pl_module.epoch_loss_terms()  # type: ignore[operator]
        del self.losses[trainer.current_epoch :]
        self.losses.append(distillation_loss(terms))
        pl_module.log("train/temperature", float(pl_module.method.temperature))  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = list(state_dict["losses"])


def schedule_from_config(node: Any, epochs: int) -> TemperatureSchedule | None:
    """The callback for a ``temperature`` config node (None when no schedule is configured)."""
    if not node:
        return None
    params = {k: float(v) for k, v in node.items() if k != "name"}
    return TemperatureSchedule(str(node.name), epochs, **params)
