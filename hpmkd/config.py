"""Config plumbing: where the config tree lives, resolvers, generated model groups, validation."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import platformdirs
from omegaconf import DictConfig, OmegaConf

from hpmkd.config_keys import check_added_keys
from hpmkd.errors import UserError
from hpmkd.model_nodes import canonical_model_nodes
from hpmkd.paths import check_writable_dir

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The `conf/` tree: beside the package in a checkout, inside it in an installed wheel."""
    for candidate in (_PACKAGE_DIR.parent / "conf", _PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"hpmkd's config tree is missing (looked beside and inside {_PACKAGE_DIR})")


def _wandb_offline() -> bool:
    return not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "online"


# where a run writes, how it logs and which seed it uses: not what makes it a configuration
_NOT_IN_GROUP = (
    "seed", "paths", "logger", "store", "resume", "tags", "skip_complete", "optimized_metric",
    "bench", "checkpoint_every_s", "pack",
)  # fmt: skip

# numbers of results.json a sweeper can optimise (``optimized_metric``)
OBJECTIVES = (
    "acc_best", "acc_last", "test_acc", "test_acc_best", "test_acc_last", "test_acc_top5_last",
    "retention", "compression_ratio", "train_time_s", "wall_time_s",
)  # fmt: skip


def _run_group(*, _root_: DictConfig) -> str:
    """``<strategy>-<method>-<hash>``: the same for every seed of one configuration, so a logger
    that groups runs (wandb) aggregates seeds."""
    from hpmkd.store import content_key

    settings = {
        k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k])
        else _root_[k]
        for k in _root_
        if k not in _NOT_IN_GROUP
    }  # fmt: skip
    strategy = (_root_.get("strategy") or {}).get("name", "plain")
    method = (_root_.get("method") or {}).get("name", "ce")
    return f"{strategy}-{method}-{content_key('group', settings)[:10]}"


def register_resolvers() -> None:
    """Resolvers used by the config tree (idempotent)."""
    resolvers = {
        "hpmkd_cache_dir": lambda: platformdirs.user_cache_dir("hpmkd"),
        "hpmkd_wandb_offline": _wandb_offline,
        "hpmkd_run_group": _run_group,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


MODEL_TABLE = _PACKAGE_DIR / "model_table.json"


def registry_model_table() -> dict[str, dict[str, Any]]:
    """Every selectable model name -> its default parameters, from the model registry (imports
    torch); ``MODEL_TABLE`` holds a copy so that composing a config does not."""
    from hpmkd.models import list_models, model_info

    # Any wrn_D_W builds; these common ones are also selectable as config-group options.
    wide_resnets = [f"wrn_{d}_{w}" for d in (10, 16, 22, 28, 40) for w in (1, 2, 4, 8, 10)]
    names = sorted(set(list_models()) | set(wide_resnets))
    return {name: dict(model_info(name).default_params) for name in names}


def write_model_table() -> Path:
    """Regenerate ``MODEL_TABLE`` from the registry (after a model is added or changed)."""
    MODEL_TABLE.write_text(json.dumps(registry_model_table(), indent=1, sort_keys=True) + "\n")
    return MODEL_TABLE


MODEL_GROUPS = ("teacher", "student", "assistant")


def model_table() -> dict[str, dict[str, Any]]:
    """``MODEL_TABLE``: model name -> default parameters, without importing torch."""
    return json.loads(MODEL_TABLE.read_text())


def model_group_node(group: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The option ``<group>=<name>`` of a generated model group (``MODEL_GROUPS``)."""
    if group == "student":
        # target_ratio: replaced by the member of this model's family closest to
        # teacher parameters / target_ratio (a compression-ratio scan)
        return {"arch": name, "params": params, "target_ratio": None}
    if group == "teacher":
        # seed null: the run's seed. A fixed teacher seed lets a seed sweep share one teacher.
        return {"arch": name, "params": params, "checkpoint": None, "seed": None}
    return {"arch": name, "params": params, "checkpoint": None}


def setup() -> None:
    register_resolvers()


def needs_extra(what: str, extra: str) -> str:
    """The line for a feature whose packages come with the optional extra ``extra``."""
    return (
        f"{what} needs hpmkd's optional extra '{extra}': pip install \"hpmkd[{extra}]\" "
        f"(in a checkout: uv sync --extra {extra})"
    )


# loggers whose package is an optional extra: _target_ -> (modules, any of which it needs; extra)
LOGGER_EXTRAS = {
    "lightning.pytorch.loggers.WandbLogger": (("wandb",), "wandb"),
    "lightning.pytorch.loggers.TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
}


def check_logger_packages(loggers: DictConfig | None) -> None:
    """UserError naming the extra to install for a selected logger whose package is missing."""
    for name, node in (loggers or {}).items():
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        modules, extra = LOGGER_EXTRAS.get(target, ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise UserError(needs_extra(f"logger '{name}'", extra))


def _positive(value: object, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{what} must be a positive number, got {value!r}")


def check_values(cfg: DictConfig) -> None:
    """The checks that need neither torch nor the machine's devices: a bad value answers before
    the training stack is imported."""
    recipe = cfg.recipe
    _positive(recipe.epochs, "recipe.epochs")
    if not isinstance(recipe.epochs, int):
        raise UserError(f"recipe.epochs must be a whole number, got {recipe.epochs!r}")
    _positive(recipe.batch_size, "recipe.batch_size")
    _positive(recipe.eval_batch_size, "recipe.eval_batch_size")
    _positive(recipe.optimizer.get("lr"), "recipe.optimizer.lr")
    every = cfg.get("checkpoint_every_s", 0)
    if not isinstance(every, (int, float)) or isinstance(every, bool) or every < 0:
        raise UserError(f"checkpoint_every_s must be a number of seconds >= 0, got {every!r}")
    method = cfg.get("method")
    if method is not None:
        _positive(method.get("temperature"), "method.temperature")
    schedule = cfg.get("temperature")
    if schedule and method is not None and "temperature" not in method:
        raise UserError(
            f"temperature={schedule.name} needs a method with a temperature; "
            f"method '{method.name}' has none"
        )
    for role in ("student", "teacher"):
        if cfg.get(role) is None:
            raise UserError(
                f"no {role} configured; pick one with {role}=<model> (see `hpmkd models`)"
            )
    metric = cfg.get("optimized_metric")
    if metric is not None and metric not in OBJECTIVES:
        raise UserError(f"unknown optimized_metric '{metric}'; valid: {', '.join(OBJECTIVES)}")
    resume = cfg.get("resume")
    if resume not in (True, False, None) and not isinstance(resume, str):
        raise UserError(f"resume must be true, false or a path, got {resume!r}")
    _whole(cfg.get("seed"), "seed")
    _whole(cfg.teacher.get("seed"), "teacher.seed")
    _positive(cfg.student.get("target_ratio"), "student.target_ratio")
    check_writable_dir(cfg.paths.cache_dir, "cache directory (HPMKD_CACHE, paths.cache_dir)")
    check_writable_dir(cfg.store.root, "store.root")
    check_logger_packages(cfg.get("logger"))
    check_added_keys(cfg)


def validate(cfg: DictConfig) -> None:
    """Checks that need no data or model: fail before anything is loaded or trained."""
    # imported here: torch and Lightning are not needed by the config plumbing above
    from hpmkd.engine.callbacks import user_callbacks
    from hpmkd.engine.devices import check_devices, run_device_type
    from hpmkd.engine.perf import check_precision

    check_values(cfg)
    canonical_model_nodes(cfg, _group_choices())  # `_target_` nodes -> arch + params
    if cfg.get("teachers") is not None:
        from hpmkd.engine.model_config import teacher_configs

        teacher_configs(cfg)
    check_devices(cfg.trainer)
    user_callbacks(cfg)  # a bad callback node fails here, not after a teacher has trained
    check_precision(cfg.trainer.get("precision"), run_device_type(cfg.trainer.get("accelerator")))


def _group_choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def _whole(value: object, what: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise UserError(f"{what} must be a whole number, got {value!r}")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
