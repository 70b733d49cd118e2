"""Keys added on the command line (``+node.key=value``) must be keys the node accepts.

Hydra adds any key it is told to, so a typo (``+recipe.epoch=3``) would be silently ignored. The
config is composed again without the key-adding overrides (group selections such as
``+strategy=kd`` are kept); a key missing from that composition is accepted only where a node is
open by design:

- ``*.params``: model keyword arguments, checked by the model builder;
- ``teacher``/``student``/``assistant``: ``_target_``, ``features``, ``checkpoint_prefix``,
  ``pretrained``, and for a foreign model (hpmkd.model_nodes) any argument of its callable;
- ``trainer``: the arguments of ``lightning.Trainer``;
- a node with ``_target_``: the arguments of what it instantiates;
- ``callbacks``: a callback of any name with a ``_target_`` (checked when instantiated);
- ``method``: the arguments of the method's class;
- ``data``: the keys any ``conf/data`` option of the same source (``source`` or ``name``) defines;
- the top level: a variable that an interpolation elsewhere in the config reads.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from hpmkd.errors import UserError
from hpmkd.model_nodes import MODEL_ROLES, NODE_KEYS, is_foreign


def check_added_keys(cfg: DictConfig) -> None:
    """UserError naming the first key added by an override that its node does not accept."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():  # composed by a test or `hpmkd acm`: nothing was added
        return
    hydra_cfg = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    groups = set(hydra_cfg.runtime.choices)
    added = [
        o
        for o in overrides
        if (o.is_add() or o.is_force_add()) and o.key_or_group.split("@")[0] not in groups
    ]
    if not added:
        return
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        kept = [o.input_line for o in overrides if o not in added]
        base = compose(config_name=hydra_cfg.job.config_name, overrides=kept)
    else:
        # A sweep member in a process of its own (hydra/launcher=parallel), where composing again
        # would re-import Hydra's plugins: `+key` never replaces a key, so removing those keys
        # gives the composition; `++key` may have replaced one and is not checked here.
        added = [o for o in added if o.is_add()]
        base = _without(cfg, [o.key_or_group for o in added])
    for override in added:
        _check_path(cfg, base, override.key_or_group)


def _without(cfg: DictConfig, paths: list[str]) -> DictConfig:
    base = cfg.copy()
    with open_dict(base):
        for path in paths:
            parent, _, key = path.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
            if isinstance(node, DictConfig) and key in node:
                del node[key]
    return base


def _check_path(cfg: DictConfig, base: DictConfig, path: str) -> None:
    parts = path.split(".")
    node: Any = base
    for depth, key in enumerate(parts):
        if not isinstance(node, DictConfig):
            return  # under a list or a value replaced as a whole: nothing to compare with
        if key not in node:
            parent = ".".join(parts[:depth])
            _check_key(cfg, node, parent, key)
            return
        node = node._get_node(key)


def _check_key(cfg: DictConfig, node: DictConfig, parent: str, key: str) -> None:
    if parent.rsplit(".", 1)[-1] == "params" or (not parent and _interpolated(cfg, key)):
        return
    if parent == "callbacks" and OmegaConf.select(cfg, f"callbacks.{key}._target_") is not None:
        return
    if parent in MODEL_ROLES and _model_key(cfg.get(parent), key):
        return
    extra = ""
    accepts = _accepted(node, parent) if parent else None
    if accepts is not None:
        names, extra = accepts
        if names is None or key in names:
            return
    full = f"{parent}.{key}" if parent else key
    where = parent or "the top level"
    raise UserError(
        f"unknown key '{full}'; valid keys of {where}: {', '.join(sorted(node))}{extra}"
    )


def _model_key(node: object, key: str) -> bool:
    """A model node takes hpmkd's node keys; one naming a foreign model (``_target_``, or an
    ``arch`` outside the zoo) also any argument, checked against its callable when built."""
    if key in NODE_KEYS:
        return True
    return isinstance(node, DictConfig) and ("_target_" in node or is_foreign(node.get("arch")))


def _accepted(node: DictConfig, parent: str) -> tuple[set[str] | None, str] | None:
    """(names, what they are) a node accepts beyond its keys; names None: anything."""
    if parent == "trainer":
        from lightning import Trainer

        return _arguments(Trainer), " (or an argument of lightning.Trainer)"
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        from hydra.utils import get_object

        try:
            return _arguments(get_object(target)), f" (or an argument of {target})"
        except Exception:  # noqa: BLE001 - not importable here: it fails when instantiated
            return None, ""
    if parent == "method" and isinstance(node.get("name"), str):
        from hpmkd.methods.base import METHODS

        method = METHODS.get(node.name)
        if method is not None:
            return _arguments(method), f" (or an argument of method '{node.name}')"
    if parent == "data":
        source = node.get("source") or node.get("name")
        return _data_keys(source), f" (or a key of a conf/data option of {source})"
    return None


def _arguments(fn: Callable[..., Any]) -> set[str] | None:
    """Keyword arguments of ``fn`` (a class: its constructor); None when it takes ``**kwargs``."""
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def _data_keys(source: Any) -> set[str]:
    from hpmkd.config import config_dir

    keys: set[str] = set()
    for path in sorted((config_dir() / "data").glob("*.yaml")):
        option = OmegaConf.load(path)
        if (
            isinstance(option, DictConfig)
            and (option.get("source") or option.get("name")) == source
        ):
            keys |= set(option)
    return keys


def _interpolated(cfg: DictConfig, key: str) -> bool:
    """Whether an interpolation in ``cfg`` reads the top-level ``key``."""
    pattern = re.compile(r"\$\{[^}]*(?<![\w.])" + re.escape(key) + r"\b")
    return any(pattern.search(text) for text in _strings(cfg))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, DictConfig):
        for key in node:
            yield from _strings(node._get_node(key))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            yield from _strings(node._get_node(index))
    else:
        value = node._value() if hasattr(node, "_value") else node
        if isinstance(value, str):
            yield value
