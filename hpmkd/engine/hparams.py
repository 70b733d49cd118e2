"""What a fit records about itself as hyperparameters (every logger, every checkpoint), and
loading a trained student back from one of its checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpmkd.data.splits import DataSplits
from hpmkd.engine.model_config import GIVEN_PREFIX, model_params
from hpmkd.errors import UserError
from hpmkd.models import build_model

FIT_KEY = "fit"  # beside the config's own top-level keys: which fit of the run this is
STUDENT_PREFIX = "student."  # the student's weights within a DistillModule's state_dict


def fit_hparams(cfg: DictConfig, unit: str, data: DataSplits, choice: Any = None) -> dict[str, Any]:
    """The run's resolved config, and the fit's unit (``student``, ``teacher``, a link...), the
    data's class count and input shape (to rebuild the model) and a strategy's choice of
    settings in place of the configured ones (a ``TrainingChoice`` of HPM-KD's ACM), if any."""
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    fit = {"unit": unit, "num_classes": data.num_classes, "input_shape": list(data.input_shape)}
    if choice is not None:
        fit["choice"] = {
            name: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value)
            else value
            for name, value in dataclasses.asdict(choice).items()
        }  # fmt: skip
    return {**resolved, FIT_KEY: fit}


def checkpoint_file(path: Path) -> Path:
    """``path`` itself (a ``.ckpt``), or a run directory's best-validation checkpoint (its last
    when the run had no validation split)."""
    if path.is_file():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise UserError(f"no checkpoint at {path} (a .ckpt file, or a run directory with checkpoints/)")


def load_student(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The student trained by a run, with its weights, in eval mode.

    ``path`` is a Lightning checkpoint an hpmkd fit wrote or a run directory (its
    ``checkpoints/best.ckpt``). The model is rebuilt from the hyperparameters the checkpoint
    holds; pass ``model`` (of the same architecture) for a student that was given as an
    ``nn.Module`` or a fit other than a run's student or teacher. Checkpoints are pickles: load
    only files you trust.
    """
    file = checkpoint_file(Path(path))
    ckpt = torch.load(file, map_location="cpu", weights_only=False)
    hparams = ckpt.get("hyper_parameters") or {}
    if FIT_KEY not in hparams:
        raise UserError(f"{file} holds no hpmkd hyperparameters (not written by an hpmkd fit)")
    if model is None:
        model = _rebuild(hparams, file)
    state = {
        name.removeprefix(STUDENT_PREFIX): value
        for name, value in ckpt["state_dict"].items()
        if name.startswith(STUDENT_PREFIX)
    }
    model.load_state_dict(state)
    return model.eval()


def _rebuild(hparams: Mapping[str, Any], file: Path) -> nn.Module:
    fit = hparams[FIT_KEY]
    node = hparams.get(fit["unit"])
    if not isinstance(node, Mapping) or not isinstance(node.get("arch"), str):
        raise UserError(
            f"{file} is the checkpoint of '{fit['unit']}', which the config does not describe; "
            "pass model=<a module of its architecture>"
        )
    if node["arch"].startswith(GIVEN_PREFIX):
        raise UserError(
            f"the {fit['unit']} of {file} was given as an nn.Module; pass model=<a module of "
            "its architecture>"
        )
    return build_model(
        node["arch"],
        num_classes=fit["num_classes"],
        input_shape=tuple(fit["input_shape"]),
        **model_params(OmegaConf.create(dict(node))),
    )
