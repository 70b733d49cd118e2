"""The Python API: ``hpmkd.distill`` and ``hpmkd.fit``, on the path ``hpmkd train`` takes.

The arguments become Hydra overrides of ``conf/train.yaml`` (composed with Hydra's compose API,
validated like the CLI's), and the run goes through ``hpmkd.train.run_train`` like every CLI run:
same strategies, store, results.json. What a config cannot name (an ``nn.Module``, a
``DistillMethod`` instance, tensors, a ``Dataset``) is handed to the run alongside the config.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import Dataset

from hpmkd import config
from hpmkd.data.splits import DataSplits, split_indices
from hpmkd.engine.context import STUDENT_FILE
from hpmkd.engine.hparams import load_student
from hpmkd.engine.model_config import GIVEN_PREFIX
from hpmkd.errors import UserError
from hpmkd.methods import DistillMethod
from hpmkd.results import RESULTS_FILE

Model = str | nn.Module
Data = str | DataSplits | tuple[torch.Tensor, torch.Tensor] | Dataset


@dataclass
class Result:
    """A finished run: ``metrics`` is its results.json, ``student`` the trained student (its
    best-validation weights, as ``student.pt`` holds them)."""

    metrics: dict[str, Any]
    student: nn.Module
    out_dir: Path

    @property
    def results_file(self) -> Path:
        return self.out_dir / RESULTS_FILE

    @property
    def student_file(self) -> Path:
        return self.out_dir / STUDENT_FILE


def distill(
    teacher: Model = "mlp_large",
    student: Model = "mlp_small",
    *,
    method: str | DistillMethod = "kd",
    data: Data = "digits",
    strategy: str = "kd",
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> Result:
    """Distil ``teacher`` into ``student`` with ``method`` under ``strategy``.

    Models are zoo names (``hpmkd models``) or ``nn.Module`` instances (a teacher instance is
    used as trained; a student instance starts from its own weights). ``method`` is a name of the
    ``method`` config group or a ``DistillMethod`` (strategy ``kd`` only). ``data`` is a name of
    the ``data`` group, a ``DataSplits``, tensors ``(x, y)`` or a torch ``Dataset`` of ``(x, y)``
    pairs (split into train/val/test, stratified, by ``seed``). ``overrides`` are Hydra
    overrides as on the command line (``recipe.epochs=5``, ``method.temperature=2``).
    """
    names = {"teacher": teacher, "student": student}
    given = {role: m for role, m in names.items() if isinstance(m, nn.Module)}
    if strategy == "plain":
        given.pop("teacher", None)
    if isinstance(method, DistillMethod) and strategy != "kd":
        raise UserError(
            f"a method instance works with strategy 'kd'; pass a method name for '{strategy}'"
        )
    for role, model in names.items():
        if not isinstance(model, (str, nn.Module)):
            raise UserError(
                f"{role} must be a model name or an nn.Module, got {type(model).__name__}"
            )
    args = [f"seed={seed}"]
    if strategy != "plain":
        args.append(f"+strategy={strategy}")
        if isinstance(method, str):
            if _takes_method(strategy):
                args.append(f"method={method}")
        elif not isinstance(method, DistillMethod):
            raise UserError(
                f"method must be a name or a DistillMethod, got {type(method).__name__}"
            )
    for role, model in names.items():
        if isinstance(model, str):
            args.append(f"{role}={model}")
    if isinstance(data, str):
        args.append(f"data={data}")
    if recipe is not None:
        args.append(f"recipe={recipe}")
    run_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="hpmkd-"))
    cfg = compose([*args, *overrides, f"paths.output_dir={run_dir.resolve()}"])
    splits = None if isinstance(data, str) else as_splits(data, cfg)
    with open_dict(cfg):
        for role in given:
            cfg[role] = {"arch": f"{GIVEN_PREFIX}{role}", "params": {}, "checkpoint": None,
                         "seed": None, "target_ratio": None}  # fmt: skip
        if isinstance(method, DistillMethod):
            cfg.method = {"name": method.name, "instance": type(method).__name__}
        if splits is not None:
            cfg.data = {"name": splits.name, "fingerprint": splits.fingerprint()}
    return run(cfg, splits, {f"{GIVEN_PREFIX}{r}": m for r, m in given.items()},
               method if isinstance(method, DistillMethod) else None)  # fmt: skip


def fit(
    student: Model = "mlp_small",
    *,
    data: Data = "digits",
    recipe: str | None = None,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> Result:
    """Train ``student`` on the labels alone (the ``plain`` strategy); arguments as ``distill``."""
    return distill(
        student=student, data=data, strategy="plain", recipe=recipe, overrides=overrides,
        out_dir=out_dir, seed=seed,
    )  # fmt: skip


def _takes_method(strategy: str) -> bool:
    """Whether ``+strategy=<strategy>`` pulls in a ``method`` (SMSKD's and the aggregate's stages
    name theirs in ``strategy.methods``)."""
    path = config.config_dir() / "strategy" / f"{strategy}.yaml"
    if not path.is_file():
        return True  # composing reports the unknown strategy
    defaults = OmegaConf.load(path).get("defaults") or []
    return any(isinstance(d, DictConfig) and "/method" in d for d in defaults)


def compose(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``hpmkd train`` composes it (errors: one line)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    from hpmkd.hpm.inspect import _compose_error

    config.setup()
    try:
        with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
            cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    except HydraException as err:
        raise UserError(_compose_error(err)) from None
    # `${hydra:...}` interpolations (paths) resolve only while a Hydra config is set
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run(
    cfg: DictConfig,
    data: DataSplits | None = None,
    given: dict[str, nn.Module] | None = None,
    method: DistillMethod | None = None,
) -> Result:
    """Run a composed config the way ``hpmkd train`` does; the student comes back trained."""
    from hpmkd.train import run_train

    metrics = run_train(cfg, data=data, given=given, given_method=method)
    out_dir = Path(cfg.paths.output_dir)
    student = _student(cfg, data, given or {})
    student.load_state_dict(torch.load(out_dir / STUDENT_FILE, map_location="cpu"))
    return Result(metrics=metrics, student=student.eval(), out_dir=out_dir)


def _student(cfg: DictConfig, data: DataSplits | None, given: dict[str, nn.Module]) -> nn.Module:
    import copy

    from hpmkd.data import load_data
    from hpmkd.engine.model_config import model_params
    from hpmkd.models import build_model

    arch = cfg.student.arch
    if arch in given:
        return copy.deepcopy(given[arch])
    splits = data if data is not None else load_data(cfg.data)
    shape = {"num_classes": splits.num_classes, "input_shape": tuple(splits.input_shape)}
    return build_model(arch, **shape, **model_params(cfg.student))


def as_splits(data: Data, cfg: DictConfig) -> DataSplits:
    """``DataSplits`` from splits, tensors ``(x, y)`` or a ``Dataset`` of ``(x, y)`` pairs.

    uint8 ``(N, C, H, W)`` inputs are images (normalised on the device by their training
    split's per-channel statistics); anything else is taken as float features as they are.
    """
    if isinstance(data, DataSplits):
        return data
    if isinstance(data, Dataset):
        pairs = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    elif isinstance(data, tuple) and len(data) == 2:
        x, y = (torch.as_tensor(t) for t in data)
    else:
        raise UserError(
            "data must be a dataset name, a DataSplits, tensors (x, y) or a torch Dataset; "
            f"got {type(data).__name__}"
        )
    if len(x) != len(y) or y.ndim != 1 or len(y) == 0:
        raise UserError(f"data: x has {len(x)} rows, y must be a 1-D label tensor of as many")
    y = y.long()
    classes = sorted(set(y.tolist()))
    if classes != list(range(len(classes))):
        raise UserError(f"data: labels must be 0..K-1, got {classes[:10]}")
    fractions = {
        "val_fraction": float(cfg.data.get("val_fraction", 0.1)),
        "test_fraction": float(cfg.data.get("test_fraction", 0.2)),
    }
    index = split_indices(y.numpy(), seed=int(cfg.data.get("split_seed", 0)), **fractions)
    is_image = x.dtype == torch.uint8 and x.ndim == 4
    x = x if is_image else x.float()
    train_x = x[index["train"]]
    mean = std = None
    if is_image:
        pixels = train_x.float().div(255).transpose(0, 1).flatten(1)
        mean = tuple(pixels.mean(1).tolist())
        std = tuple(pixels.std(1).clamp_min(1e-6).tolist())
    return DataSplits(
        name="tensors", x_train=train_x, y_train=y[index["train"]],
        x_val=x[index["val"]], y_val=y[index["val"]], x_test=x[index["test"]],
        y_test=y[index["test"]], num_classes=len(classes), class_names=[str(c) for c in classes],
        input_shape=tuple(x.shape[1:]), is_image=is_image, mean=mean, std=std,
    )  # fmt: skip


__all__ = ["Result", "as_splits", "compose", "distill", "fit", "load_student", "run"]
