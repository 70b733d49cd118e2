"""How a model node of the config names its model, without importing torch.

A node's ``arch`` is a zoo name (``resnet20``), ``timm:<name>`` (``timm.create_model``),
``hf:<model id or directory>`` (Hugging Face ``AutoModelForImageClassification``) or the dotted
path of any callable returning an ``nn.Module`` (``torchvision.models.resnet18``). A node may
instead name the callable with ``_target_`` and give its arguments as keys beside it, as Hydra
does; ``canonical_model_nodes`` rewrites such a node to ``arch`` + ``params`` before the run, so
that the store key, the records and the report see one spelling.

A teacher's ``arch`` may also name a scikit-learn-compatible classifier (``fit`` and
``predict_proba``: scikit-learn, XGBoost, LightGBM, CatBoost): a tabular teacher
(hpmkd.engine.tabular_teacher), told apart here by its module prefix without importing it;
``TABULAR_TEACHERS`` are its ``teacher=`` presets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from hpmkd.errors import UserError

log = logging.getLogger("hpmkd")

# node keys that become arguments of a foreign model's builder
BUILD_KEYS = ("pretrained", "features")

MODEL_ROLES = ("teacher", "student", "assistant")
# keys of a model node that are hpmkd's own, never arguments of a foreign model's callable
NODE_KEYS = frozenset(
    {"arch", "params", "checkpoint", "seed", "target_ratio", "features", "checkpoint_prefix",
     "pretrained", "_target_", "oof_folds"}
)  # fmt: skip

# the libraries of scikit-learn-compatible classifiers, and the extra that installs each
TABULAR_LIBRARIES = {"sklearn": None, "xgboost": "xgboost", "lightgbm": "lightgbm",
                     "catboost": "catboost"}  # fmt: skip
OOF_FOLDS = 5  # a tabular teacher's out-of-fold soft labels: stratified folds (0: no cross-fitting)
# `teacher=<name>` presets of tabular teachers: the library's defaults written out (a later release
# changing them does not change what a preset means); random_state comes from the teacher's seed
TABULAR_TEACHERS: dict[str, dict[str, Any]] = {
    "hgb": {"arch": "sklearn.ensemble.HistGradientBoostingClassifier",
            "params": {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 31}},
    "random_forest": {"arch": "sklearn.ensemble.RandomForestClassifier",
                      "params": {"n_estimators": 100, "min_samples_leaf": 1}},
    "xgboost": {"arch": "xgboost.XGBClassifier",
                "params": {"n_estimators": 100, "learning_rate": 0.3, "max_depth": 6,
                           "tree_method": "hist"}},
    "lightgbm": {"arch": "lightgbm.LGBMClassifier",
                 "params": {"n_estimators": 100, "learning_rate": 0.1, "num_leaves": 31,
                            "verbose": -1}},
}  # fmt: skip


def is_tabular(arch: object) -> bool:
    """Whether ``arch`` names a classifier of a known scikit-learn-compatible library."""
    return isinstance(arch, str) and arch.partition(".")[0] in TABULAR_LIBRARIES and "." in arch


def tabular_teacher_node(name: str) -> dict[str, Any]:
    """The ``teacher=<name>`` option of a tabular-teacher preset."""
    preset = TABULAR_TEACHERS[name]
    return {"arch": preset["arch"], "params": dict(preset["params"]), "checkpoint": None,
            "seed": None, "oof_folds": OOF_FOLDS}  # fmt: skip


def is_foreign(arch: object) -> bool:
    """Whether ``arch`` names a model outside the zoo (zoo names hold neither ':' nor '.')."""
    return isinstance(arch, str) and (":" in arch or "." in arch)


def canonical_model_nodes(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> None:
    """Rewrite every model node of ``cfg`` that uses ``_target_`` to ``arch`` + ``params`` (in
    place); ``choices`` (Hydra's group choices) tell which zoo defaults a foreign node inherited
    from its group, which are dropped: they are arguments of the zoo model it replaces."""
    for role in MODEL_ROLES:
        node = cfg.get(role)
        if isinstance(node, DictConfig):
            _canonical(node, role, (choices or {}).get(role))
    teachers = cfg.get("teachers")
    if isinstance(teachers, ListConfig):
        for index in range(len(teachers)):
            entry = teachers[index]
            if isinstance(entry, DictConfig):
                _canonical(entry, f"teachers[{index}]", None)


def _canonical(node: DictConfig, role: str, group_choice: str | None) -> None:
    target = node.get("_target_")
    with open_dict(node):
        if target is not None:
            arguments = {k: node[k] for k in list(node) if k not in NODE_KEYS}
            for key in [*arguments, "_target_"]:
                del node[key]
            inherited = node.get("arch")
            node.arch = str(target)
            params = _explicit_params(node, inherited, role)
            node.params = OmegaConf.merge(params, arguments) if arguments else params
        elif is_foreign(node.get("arch")) and group_choice is not None:
            node.params = _explicit_params(node, group_choice, role)
        # the model's builder takes them (hpmkd.models.foreign.build_foreign), and
        # pretrained weights are part of what the store key must tell apart
        for key in BUILD_KEYS:
            value = node.get(key)
            if value is None or value is False:
                continue
            if not is_foreign(node.get("arch")):
                raise UserError(
                    f"{role}.{key} applies to models from outside the zoo (timm:, hf:, "
                    f"_target_); '{node.get('arch')}' is a zoo model"
                )
            if node.get("params") is None:
                node.params = {}
            node.params[key] = value
            del node[key]


def _explicit_params(node: DictConfig, zoo_name: object, role: str) -> DictConfig:
    """The node's ``params`` unless they are exactly the zoo defaults of ``zoo_name``."""
    from hpmkd.config import model_table

    params = node.get("params") or OmegaConf.create({})
    defaults = model_table().get(zoo_name) if isinstance(zoo_name, str) else None
    if defaults and OmegaConf.to_container(params, resolve=True) == defaults:
        log.info("%s: %s's default params left out (they belong to the zoo model)", role, zoo_name)
        return OmegaConf.create({})
    return params
