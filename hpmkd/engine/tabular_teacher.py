"""A scikit-learn-compatible teacher for a run: its soft labels fitted once and stored.

The artifact (kind ``tabular_teacher``, role ``teacher``) is keyed by the estimator's class and
parameters, the library release, the data fingerprint, the number of folds and the seed; it holds
the log-probabilities of every split (``soft_labels.npz``: ``train`` out of fold, ``val`` and
``test`` from the full fit), the pickled full-fit estimator and its cost. Every later run with
the same key reads them back and fits nothing.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from hpmkd.engine.context import RunContext
from hpmkd.engine.model_config import model_params
from hpmkd.engine.records import ModelRecord
from hpmkd.errors import UserError
from hpmkd.methods import DistillMethod
from hpmkd.model_nodes import OOF_FOLDS
from hpmkd.models.sklearn_teacher import (
    SoftLabels,
    TabularTeacher,
    cost,
    estimator_factory,
    names_classifier,
    soft_labels,
)
from hpmkd.store import content_key

log = logging.getLogger("hpmkd")

LABELS_FILE = "soft_labels.npz"
ESTIMATOR_FILE = "estimator.pkl"


def oof_folds(model_cfg: DictConfig) -> int:
    folds = model_cfg.get("oof_folds")
    return OOF_FOLDS if folds is None else int(folds)


def tabular_spec(ctx: RunContext, model_cfg: DictConfig, seed: int) -> dict[str, Any]:
    """Everything that determines a tabular teacher's soft labels (its store key)."""
    library = str(model_cfg.arch).partition(".")[0]
    version = getattr(importlib.import_module(library), "__version__", None)
    return {
        "estimator": model_cfg.arch,
        "params": model_params(model_cfg),
        "library_version": version,
        "num_classes": ctx.data.num_classes,
        "data": ctx.data.fingerprint(),
        "oof_folds": oof_folds(model_cfg),
        "seed": seed,
    }


def obtain_tabular_teacher(
    ctx: RunContext, model_cfg: DictConfig, role: str, seed: int
) -> tuple[TabularTeacher, ModelRecord]:
    """The teacher's soft labels from the store, or fitted (cross-fitted) and stored."""
    if ctx.data.is_image:
        raise UserError(
            f"{role} '{model_cfg.arch}' is a scikit-learn model: it needs tabular data, "
            f"not images ('{ctx.data.name}')"
        )
    if model_cfg.get("checkpoint"):
        raise UserError(f"{role}.checkpoint applies to torch models; '{model_cfg.arch}' is not one")
    make = estimator_factory(model_cfg.arch, model_params(model_cfg), seed)
    folds = oof_folds(model_cfg)
    if folds == 0:
        log.warning(
            "%s %s: oof_folds=0: the soft labels of training rows come from a model fitted on "
            "them (leakage: overconfident targets)", role, model_cfg.arch,
        )  # fmt: skip
    spec = tabular_spec(ctx, model_cfg, seed)
    key = content_key("tabular_teacher", spec)
    name = str(model_cfg.arch).rpartition(".")[2]
    with ctx.store.lock(key):
        artifact = ctx.store.get(key)
        if artifact is not None:
            labels = _load(artifact.path)
            meta = artifact.meta
            source = "store"
            log.info("%s %s: reused from the store (%s)", role, name, key[:12])
        else:
            log.info("%s %s: not in the store, fitting it (%d folds)", role, name, folds)
            data = ctx.data
            splits = {
                "train": (data.x_train.numpy(), data.y_train.numpy()),
                "val": (data.x_val.numpy(), data.y_val.numpy()),
                "test": (data.x_test.numpy(), data.y_test.numpy()),
            }
            labels = soft_labels(make, splits, num_classes=data.num_classes, folds=folds, seed=seed)
            meta = {
                **spec,
                "role": "teacher",
                "val_acc": _accuracy(labels.val, data.y_val.numpy()),
                "test_acc": _accuracy(labels.test, data.y_test.numpy()),
                "cost": cost(labels, splits["test"][0]),
                "fit": {"train_time_s": labels.fit_s},
            }
            ctx.store.put(key, lambda path: _save(path, labels), meta)
            source = "trained"
            log.info("%s %s: fitted in %.1f s and stored (%s)", role, name, labels.fit_s, key[:12])
    ctx.record_unit(role, model_cfg.arch, source, meta["fit"])
    teacher = TabularTeacher(labels.estimator, torch.from_numpy(labels.train), name)
    record = ModelRecord(
        role=role,
        arch=model_cfg.arch,
        params=meta["cost"]["nodes"] or 0,  # tree nodes: what the compression ratio compares
        val_acc=meta["val_acc"],
        test_acc=meta["test_acc"],
        extra={"source": source, "store_key": key, "oof_folds": folds, "cost": meta["cost"]},
        fit=None,
    )
    return teacher.eval().requires_grad_(False), record


def refuse_feature_method(teacher: object, method: DistillMethod) -> None:
    """A method that reads teacher features cannot learn from a scikit-learn teacher:
    ``teacher`` is the fitted teacher, or its ``arch`` (so that a run stops before fitting)."""
    if isinstance(teacher, TabularTeacher):
        name = teacher.model_name
    elif isinstance(teacher, str) and names_classifier(teacher):
        name = teacher
    else:
        return
    if method.teacher_features:
        raise UserError(
            f"teacher {name} is a scikit-learn model and has no features; method "
            f"{method.name} needs teacher features ({', '.join(method.teacher_features)}); use a "
            "logit method (kd, dkd, dist) or a torch teacher"
        )


def _accuracy(log_probs: np.ndarray, y: np.ndarray) -> float | None:
    return 100.0 * float((log_probs.argmax(axis=1) == y).mean()) if len(y) else None


def _save(path: Path, labels: SoftLabels) -> None:
    np.savez(path / LABELS_FILE, train=labels.train, val=labels.val, test=labels.test,
             fold=labels.fold)  # fmt: skip
    (path / ESTIMATOR_FILE).write_bytes(pickle.dumps(labels.estimator))


def _load(path: Path) -> SoftLabels:
    arrays = np.load(path / LABELS_FILE)
    estimator = pickle.loads((path / ESTIMATOR_FILE).read_bytes())
    return SoftLabels(arrays["train"], arrays["val"], arrays["test"], estimator, arrays["fold"],
                      0.0)  # fmt: skip
