"""A method's config node by name, as Hydra's ``method=<name>`` would compose it.

For the places that need a method other than the run's ``method`` (SMSKD's and the aggregate's
stages, SAKD's base): ``conf/method/<name>.yaml`` with overrides on top, its interpolations
(``fidelity.*``, ``pair.*``) resolved against the run's config when one is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpmkd.config import config_dir
from hpmkd.errors import unknown_name

_SCRATCH_KEY = "_hpmkd_method_node"


def method_names() -> list[str]:
    """The options of the ``method`` config group, sorted."""
    return sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))


def method_config(
    name_or_cfg: str | Mapping[str, Any], root: DictConfig | None = None
) -> dict[str, Any]:
    """``conf/method/<name>.yaml`` with the overrides of ``name_or_cfg`` (a name, or a mapping
    with ``name``) on top, resolved within ``root`` (the run's config) when given."""
    overrides = {"name": name_or_cfg} if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    name = str(overrides.get("name"))
    path = config_dir() / "method" / f"{name}.yaml"
    if not path.is_file():
        raise unknown_name("method", name, method_names())
    node = OmegaConf.merge(OmegaConf.load(path), overrides)
    if root is None:
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    scope = root.copy()
    with open_dict(scope):
        scope[_SCRATCH_KEY] = node
    return OmegaConf.to_container(scope[_SCRATCH_KEY], resolve=True)  # type: ignore[return-value]
