"""Model nodes of a run's config: their parameters, the teachers list, the student at a ratio."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError
from hpmkd.model_nodes import TABULAR_TEACHERS, is_tabular, tabular_teacher_node
from hpmkd.models import build_model, count_parameters
from hpmkd.models.family import family_members, member_at_ratio
from hpmkd.models.registry import model_info

log = logging.getLogger("hpmkd")

# the ``arch`` of a model passed as an instance (``RunContext.given``), never a zoo name
GIVEN_PREFIX = "module:"


def model_params(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    params = model_cfg.get("params")
    return OmegaConf.to_container(params, resolve=True) if params else {}  # type: ignore[return-value]


def teacher_configs(cfg: DictConfig) -> list[DictConfig]:
    """``teachers`` as full model nodes (registry defaults filled in); ``[teacher]`` if null.
    A tabular-teacher preset name (``hgb``, or ``{arch: hgb, seed: 0}``) stands for its
    ``teacher=`` node, with the entry's keys over it."""
    entries = cfg.get("teachers")
    if entries is None:
        entries = [cfg.teacher]
    if len(entries) == 0:
        raise UserError(
            "teachers=[] names no teacher; list at least one, e.g. teachers=[mlp_large,mlp], "
            "or teachers=null to use `teacher`"
        )
    nodes = []
    for entry in entries:
        node: dict[str, Any] = {"arch": entry} if isinstance(entry, str) else dict(entry)
        if node["arch"] in TABULAR_TEACHERS:
            nodes.append(OmegaConf.merge(tabular_teacher_node(node.pop("arch")), node))
            continue
        given = str(node["arch"]).startswith(GIVEN_PREFIX)
        defaults = (
            {}
            if given or is_tabular(node["arch"])
            else dict(model_info(node["arch"]).default_params)
        )
        node["params"] = defaults | dict(node.get("params") or {})
        nodes.append(OmegaConf.create({"checkpoint": None, "seed": None} | node))
    return nodes


def student_at_ratio(cfg: DictConfig, data: DataSplits) -> None:
    """Replace the student by the member of its family at ``student.target_ratio`` (in place)."""
    shape = {"num_classes": data.num_classes, "input_shape": data.input_shape}
    torch_teachers = [t for t in teacher_configs(cfg) if not is_tabular(t.arch)]
    if not torch_teachers:
        raise UserError(
            "student.target_ratio compares parameter counts and the teacher is a scikit-learn "
            "model; choose the student directly"
        )
    teacher_params = max(
        count_parameters(build_model(t.arch, **shape, **model_params(t))) for t in torch_teachers
    )
    student = cfg.student
    members = family_members(student.arch, model_params(student), **shape)
    member, ratio = member_at_ratio(members, teacher_params, float(student.target_ratio))
    log.info(
        "student for target ratio %g: %s, %s parameters (ratio %.1f)",
        student.target_ratio, member.label, f"{member.num_params:,}", ratio,
    )  # fmt: skip
    with open_dict(cfg):
        student.arch = member.arch
        student.params = member.params
