"""SMSKD and its direct-aggregation baseline (METHODS.md section 3).

``+strategy=smskd``: one method per stage over one shared optimiser and LR schedule; stage
starts come from ``strategy.transitions`` (epochs, or fractions of ``recipe.epochs`` when below
1) with ``strategy.methods`` (compact form) or ``strategy.stages`` (full form: a list of
``{method: {name: ..., <overrides>}, start: <epoch or fraction>}``, the first start 0).
``+strategy=aggregate`` sums all listed methods' losses in a single stage.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from hpmkd.data.augment import BatchTransform
from hpmkd.engine.context import RunContext
from hpmkd.engine.obtain import obtain_teacher
from hpmkd.engine.records import StrategyResult
from hpmkd.errors import UserError
from hpmkd.method_config import method_config
from hpmkd.methods.aggregate import Aggregate
from hpmkd.methods.composite import build_children
from hpmkd.methods.smskd import SMSKD
from hpmkd.strategies.kd import distil_student
from hpmkd.strategies.registry import register_strategy


def stage_plan(
    strategy: DictConfig, epochs: int, root: DictConfig | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """(method configs, start epochs) from the compact or the full form; each method resolved
    within ``root``, the run's config (its ``fidelity``), when given."""
    plain = OmegaConf.to_container(strategy, resolve=True)
    if plain.get("stages"):  # type: ignore[union-attr]
        stages = plain["stages"]  # type: ignore[index]
        methods = [stage["method"] for stage in stages]
        starts = [stage.get("start", 0) for stage in stages]
    else:
        methods = list(plain["methods"])  # type: ignore[index]
        starts = [0, *plain["transitions"]]  # type: ignore[index]
    if len(starts) != len(methods):
        raise UserError(
            f"smskd: {len(methods)} methods need {len(methods) - 1} transitions; got {starts[1:]}"
        )
    starts = [round(s * epochs) if isinstance(s, float) and s < 1 else int(s) for s in starts]
    if any(s >= epochs for s in starts[1:]):
        raise UserError(f"smskd: stage starts {starts} must lie before recipe.epochs={epochs}")
    return [method_config(m, root) for m in methods], starts


def forgetting_rates(correct: list[Tensor]) -> list[float]:
    """Percent of the samples right after stage m-1 that are wrong after stage m, per m >= 1."""
    out = []
    for before, after in zip(correct, correct[1:], strict=False):
        right_before = before.sum().item()
        forgotten = (before & ~after).sum().item()
        out.append(100.0 * forgotten / right_before if right_before else 0.0)
    return out


class ForgettingRate(Callback):
    """Fraction of validation samples right at the end of stage m-1 and wrong at the end of m."""

    def __init__(self, x: Tensor, y: Tensor, transform: BatchTransform, starts: list[int]) -> None:
        self.x, self.y, self.transform = x, y, transform
        self.starts = starts
        self.correct: list[Tensor] = []  # one mask per finished stage
        # fixed at the end of training: testing the best checkpoint later restores older states
        self.rates: list[float] = []

    @torch.no_grad()
    def _snapshot(self, student: nn.Module, device: torch.device) -> None:
        was_training = student.training
        student.eval()
        logits = torch.cat(
            [
                student(self.transform(self.x[i : i + 1024].to(device), train=False)).cpu()
                for i in range(0, len(self.y), 1024)
            ]
        )
        student.train(was_training)
        self.correct.append(logits.argmax(1) == self.y)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage_ends = self.starts[1:]
        if trainer.current_epoch in stage_ends and len(self.correct) <= stage_ends.index(
            trainer.current_epoch
        ):
            self._snapshot(pl_module.student, pl_module.device)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self.correct) < len(self.starts):
            self._snapshot(pl_module.student, pl_module.device)
        self.rates = forgetting_rates(self.correct)

    def state_dict(self) -> dict[str, Any]:
        return {"correct": [c.clone() for c in self.correct], "rates": list(self.rates)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.correct = list(state_dict["correct"])
        # Checkpoints are taken before the rates exist; only the state that spawned DDP workers
        # hand back at the end of their fit carries them.
        if state_dict.get("rates"):
            self.rates = list(state_dict["rates"])


@register_strategy("smskd")
def run(ctx: RunContext) -> StrategyResult:
    strategy = ctx.cfg.strategy
    teacher, teacher_record = obtain_teacher(ctx, ctx.cfg.teacher)
    methods, starts = stage_plan(strategy, ctx.recipe.epochs, ctx.cfg)

    def make_method(student: nn.Module) -> SMSKD:
        return SMSKD(
            build_children(methods),
            starts,
            student,
            lambda_c=strategy.lambda_c,
            lambda_r=strategy.lambda_r,
            tau=strategy.tau,
            weight=strategy.weight,
            reference=strategy.reference,
        )

    forgetting = ForgettingRate(ctx.data.x_val, ctx.data.y_val, ctx.transform, starts)
    callbacks = [forgetting] if len(ctx.data.y_val) else []
    summary = {"name": "smskd", "stages": methods, "starts": starts}
    result = distil_student(ctx, teacher, summary, make_method, callbacks)
    result.teacher = teacher_record
    result.details = {
        "stages": [
            {"method": m["name"], "start_epoch": s} for m, s in zip(methods, starts, strict=True)
        ],
        "forgetting_pct": forgetting.rates if callbacks else None,
    }
    return result


@register_strategy("aggregate")
def run_aggregate(ctx: RunContext) -> StrategyResult:
    strategy = ctx.cfg.strategy
    teacher, teacher_record = obtain_teacher(ctx, ctx.cfg.teacher)
    methods = [method_config(m, ctx.cfg) for m in strategy.methods]

    def make_method(student: nn.Module) -> Aggregate:
        return Aggregate(build_children(methods), lambda_c=strategy.lambda_c)

    summary = {"name": "aggregate", "methods": methods}
    result = distil_student(ctx, teacher, summary, make_method)
    result.teacher = teacher_record
    return result
