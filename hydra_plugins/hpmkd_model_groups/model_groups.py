"""A Hydra config source with one `teacher=`, `student=` and `assistant=` option per model of
the zoo, read from hpmkd's model table (hpmkd.config.MODEL_TABLE, kept equal to the model
registry by a test) without importing torch; the teacher group also serves the presets of
scikit-learn-compatible teachers (hpmkd.model_nodes.TABULAR_TEACHERS: `teacher=hgb`).

A config source rather than the ConfigStore: Hydra deep-copies the whole ConfigStore on every
composition and every config-group query, which made `hpmkd train --help` take seconds per
listed group with the zoo's ~170 stored nodes; this source holds only a path and builds the node
asked for. ``ModelGroupsSearchPath`` puts it on the search path of hpmkd's own config tree
(not in the primary config's ``hydra.searchpath``: `--help` lists only the groups of the
plugins' search path).
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from hpmkd.config import MODEL_GROUPS, config_dir, model_group_node, model_table
from hpmkd.model_nodes import TABULAR_TEACHERS, tabular_teacher_node


class ModelGroupsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ours = str(config_dir())
        if any(entry.path == ours for entry in search_path.get_path()):
            search_path.append(provider="hpmkd-models", path="hpmkd-models://zoo")


class ModelGroupsSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return "hpmkd-models"

    def load_config(self, config_path: str) -> ConfigResult:
        group, _, name = config_path.removesuffix(".yaml").partition("/")
        params = model_table().get(name) if group in MODEL_GROUPS else None
        if group == "teacher" and name in TABULAR_TEACHERS:
            node = tabular_teacher_node(name)
        elif params is not None:
            node = model_group_node(group, name, params)
        else:
            raise ConfigLoadError(f"Config not found: {config_path}")
        return ConfigResult(
            config=OmegaConf.create(node),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header={"package": None},
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", *MODEL_GROUPS)

    def is_config(self, config_path: str) -> bool:
        group, _, name = config_path.strip("/").removesuffix(".yaml").partition("/")
        return group in MODEL_GROUPS and name in _options(group)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        path = config_path.strip("/")
        if path == "":
            return [] if results_filter == ObjectType.CONFIG else sorted(MODEL_GROUPS)
        if path in MODEL_GROUPS and results_filter != ObjectType.GROUP:
            return sorted(_options(path))
        return []


def _options(group: str) -> set[str]:
    zoo = set(model_table())
    return zoo | set(TABULAR_TEACHERS) if group == "teacher" else zoo
