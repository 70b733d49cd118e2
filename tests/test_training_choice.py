"""A strategy's choice (HPM-KD's ACM) reaches the fits as an object; the run's config stays."""

from pathlib import Path

from omegaconf import OmegaConf

from hpmkd.engine.context import RunContext, TrainingChoice
from hpmkd.hpm.acm import ACMConfig
from hpmkd.strategies.hpmkd import chosen_method, training_choice


def config():
    return OmegaConf.create({
        "recipe": {"epochs": 20, "optimizer": {"lr": 0.1},
                   "scheduler": {"T_max": "${recipe.epochs}"}},
        "temperature": None,
        "method": {"name": "multi_teacher", "temperature": 4.0, "alpha": 0.5,
                   "weighting": "attention"},
        "strategy": {"components": {"mts": True, "awmt": False}, "mts": {"t_min": 1.0}},
    }, flags={"struct": True})  # fmt: skip


def test_the_choice_applies_to_the_recipe_and_schedule_not_the_config():
    cfg = config()
    chosen = ACMConfig(T0=2.0, alpha=0.9, lr=0.01, epochs=7, epsilon=0.5)
    ctx = RunContext(cfg, Path("."), None, None, choice=training_choice(cfg, chosen))  # type: ignore[arg-type]
    assert ctx.recipe.optimizer.lr == 0.01 and ctx.recipe.epochs == 7
    assert ctx.recipe.scheduler.T_max == 7  # interpolations follow the chosen epochs
    assert ctx.temperature.name == "mts" and ctx.temperature.t0 == 2.0
    assert cfg.recipe.epochs == 20 and cfg.recipe.optimizer.lr == 0.1 and cfg.temperature is None
    method = chosen_method(cfg, chosen)
    assert method["temperature"] == 2.0 and method["alpha"] == 0.9
    assert method["weighting"] == "uniform" and cfg.method.temperature == 4.0


def test_without_a_choice_the_configured_values():
    cfg = config()
    ctx = RunContext(cfg, Path("."), None, None)  # type: ignore[arg-type]
    assert ctx.recipe.epochs == 20 and ctx.temperature is None
    plain = RunContext(cfg, Path("."), None, None, choice=TrainingChoice(lr=0.5, epochs=3))  # type: ignore[arg-type]
    assert plain.temperature is None and plain.recipe.scheduler.T_max == 3
