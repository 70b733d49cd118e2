"""`hpmkd acm <overrides>`: what ACM sees for a setting and would choose, without training."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import open_dict
from rich.console import Console

from hpmkd import config
from hpmkd.data import load_data
from hpmkd.engine.context import RunContext
from hpmkd.engine.model_config import student_at_ratio, teacher_configs
from hpmkd.engine.obtain import model_spec
from hpmkd.errors import UserError
from hpmkd.hpm.record import consult_acm, has_chain
from hpmkd.hpm.source import history_source, validate_acm
from hpmkd.models import count_parameters
from hpmkd.store import ArtifactStore, content_key


def show_acm(overrides: list[str], console: Console | None = None) -> None:
    """Print the meta-features, the chosen configuration and the history rows it learned from.

    The teacher's validation accuracy is read from the store when the teacher has been trained;
    otherwise it is unknown to ACM.
    """
    config.setup()
    try:
        with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
            cfg = compose(
                "train", overrides=["+strategy=hpmkd", *overrides], return_hydra_config=True
            )
    except HydraException as err:
        raise UserError(_compose_error(err)) from None
    # `${hydra:runtime.cwd}` (paths.shared_data) resolves only while a Hydra config is set
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    config.validate(cfg)
    validate_acm(cfg)
    data = load_data(cfg.data)
    if cfg.student.get("target_ratio"):
        student_at_ratio(cfg, data)  # the student a run would train
    store = ArtifactStore(cfg.store.root)
    ctx = RunContext(cfg, Path(tempfile.gettempdir()), data, store)
    sizes = []
    for teacher_cfg in teacher_configs(cfg):
        artifact = store.get(content_key("model", model_spec(ctx, teacher_cfg)))
        accuracy = artifact.meta.get("val_acc") if artifact else None
        sizes.append((count_parameters(ctx.build(teacher_cfg)), accuracy))
    teacher_params, teacher_acc = max(sizes, key=lambda s: s[0])
    student_params = count_parameters(ctx.build(cfg.student))
    consult_acm(
        cfg, data, source=history_source(cfg), chain=has_chain(cfg.strategy),
        teacher_params=teacher_params, teacher_acc=teacher_acc, student_params=student_params,
        console=console,
    )  # fmt: skip


def _compose_error(err: HydraException) -> str:
    """A composition error in one line: an unknown option names the valid ones."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"unknown {group} '{name}'; valid: {', '.join(sorted(err.options))}"
    return " ".join(str(err).split())
