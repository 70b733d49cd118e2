"""Every config preset composes, names real models/data/methods, and keeps its promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from hpmkd import config
from hpmkd.data import list_datasets
from hpmkd.methods import METHODS
from hpmkd.models import model_info
from hpmkd.strategies import STRATEGIES

CONF = config.config_dir()
EXPERIMENTS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix(""))
    for p in (CONF / "experiment").rglob("*.yaml")
)


def _compose(*overrides: str):
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_presets_compose(experiment):
    cfg = _compose(f"experiment={experiment}")
    assert cfg.data.name in list_datasets()
    for role in ("teacher", "student"):
        model_info(cfg[role].arch)
    assert cfg.strategy.name in STRATEGIES
    if "methods" in cfg.strategy:  # staged strategies name their methods themselves
        assert all(f"{m}.yaml" in os.listdir(CONF / "method") for m in cfg.strategy.methods)
    else:
        assert cfg.method.name in METHODS


@pytest.mark.parametrize("pair", [p for p in EXPERIMENTS if p.startswith("crd_cifar100/")])
def test_crd_presets_follow_the_benchmark_recipe(pair):
    cfg = _compose(f"experiment={pair}")
    assert cfg.data.name == "cifar100" and cfg.data.val_fraction == 0.0
    recipe = cfg.recipe
    assert recipe.epochs == 240 and recipe.batch_size == 64
    assert recipe.optimizer.lr == 0.05 and recipe.optimizer.weight_decay == 5e-4
    assert list(recipe.scheduler.milestones) == [150, 180, 210]


@pytest.mark.parametrize("data", _names("data"))
def test_every_data_option_composes(data):
    node = _compose(f"data={data}").data
    assert (node.get("source") or node.name) in list_datasets()


@pytest.mark.parametrize("strategy", _names("strategy"))
def test_every_strategy_option_is_implemented(strategy):
    assert _compose(f"+strategy={strategy}").strategy.name in STRATEGIES


@pytest.mark.parametrize("method", _names("method"))
def test_every_method_option_is_registered(method):
    assert _compose("+strategy=kd", f"method={method}").method.name in METHODS


@pytest.mark.parametrize("logger", _names("logger"))
def test_logger_options_compose(logger):
    _compose(f"logger={logger}")


def test_every_registered_model_is_a_teacher_and_student_option():
    from hpmkd.models import list_models

    for name in list_models():
        cfg = _compose(f"teacher={name}", f"student={name}")
        assert cfg.teacher.arch == cfg.student.arch == name


def test_config_tree_ships_inside_the_wheel():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"conf" = "hpmkd/conf"' in text


@pytest.mark.parametrize("sweep", _names("sweep"))
def test_sweep_presets_compose_and_name_their_sweep(sweep):
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={sweep}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert "seed" in params and len(str(params.seed).split(",")) >= 3
    assert cfg.teacher.seed == 0  # one teacher shared by every member


@pytest.mark.parametrize("component", ["acm", "pdc", "awmt", "mts", "ppp", "som"])
def test_each_ablation_switches_off_exactly_its_component(component):
    components = _compose("sweep=hpmkd_ablation", f"ablate={component}").strategy.components
    assert [name for name, on in components.items() if not on] == [component]
    assert all(_compose("sweep=hpmkd_ablation", "ablate=none").strategy.components.values())


def test_wandb_groups_runs_by_configuration_not_by_seed():
    def group(*overrides: str) -> str:
        return _compose("logger=wandb", *overrides).logger.wandb.group

    assert group("seed=0") == group("seed=1") == group("seed=2", "store.root=/elsewhere")
    assert group("seed=0").startswith("plain-ce-")
    assert group("+strategy=kd").startswith("kd-kd-")
    assert group("+strategy=kd") != group("+strategy=kd", "method.temperature=2")


@pytest.mark.parametrize("composed_again", [True, False])
def test_added_keys_checked_with_or_without_a_second_composition(composed_again):
    """In the app the config is composed again without the added keys; in a sweep member's own
    process (hydra/launcher=parallel) Hydra is not initialised and `+` keys are taken out."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from hpmkd.config_keys import check_added_keys
    from hpmkd.errors import UserError

    config.setup()
    GlobalHydra.instance().clear()
    overrides = ["+strategy=kd", "+trainer.num_nodes=1", "+method.tempreature=3", "+v=1"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        if not composed_again:
            GlobalHydra.instance().clear()
        with open_dict(cfg):
            del cfg["hydra"]
        with pytest.raises(UserError, match=r"unknown key 'method.tempreature'; valid keys of "
                           r"method: ce_weight, kd_weight, name, temperature"):  # fmt: skip
            check_added_keys(cfg)
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # later tests run outside an app
