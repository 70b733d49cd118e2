"""Scikit-learn-compatible classifiers as teachers: out-of-fold soft labels and a frozen module.

A teacher's soft label for a training row must come from a model that never saw that row: a
model's predictions on its own training rows are overconfident (a forest or a 1-NN memorises
them). ``soft_labels`` therefore cross-fits: the training rows are split into ``folds``
stratified folds (shuffled with the seed), each fold's rows are predicted by a model fitted on the
other folds, and validation and test rows by the model fitted on every training row. ``folds=0``
predicts the training rows with that full model too (leaky; the caller warns).

Soft labels are log-probabilities: probabilities are clipped to at least ``PROB_FLOOR`` and
renormalised before the log, so a class the model rules out gets a finite logit
(about ``log(1e-6)``, -13.8) and a class missing from a fold's training rows gets the floor.
Log-probabilities are valid logits for a softmax, so every logit method applies its temperature
to them unchanged.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.model_nodes import TABULAR_LIBRARIES, is_tabular

log = logging.getLogger("hpmkd")

PROB_FLOOR = 1e-6


def names_classifier(arch: object) -> bool:
    """Whether ``arch`` names a scikit-learn-compatible classifier: a known library's class by
    its prefix, or any other importable class with ``fit`` and ``predict_proba`` that is not
    an ``nn.Module``."""
    if is_tabular(arch):
        return True
    if not isinstance(arch, str) or ":" in arch or "." not in arch:
        return False
    module, _, name = arch.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False  # the foreign-model builder reports it
    return _is_classifier_class(obj)


def _is_classifier_class(obj: object) -> bool:
    return (
        isinstance(obj, type)
        and not issubclass(obj, nn.Module)
        and callable(getattr(obj, "fit", None))
        and hasattr(obj, "predict_proba")
    )


def estimator_class(arch: str) -> type:
    """The class ``arch`` names; one-line UserErrors for a missing extra or a non-classifier."""
    module, _, name = arch.rpartition(".")
    library = module.partition(".")[0]
    try:
        obj = getattr(importlib.import_module(module), name)
    except ImportError as err:
        extra = TABULAR_LIBRARIES.get(library)
        hint = f": pip install 'hpmkd[{extra}]'" if extra else ""
        raise UserError(f"teacher '{arch}' needs the package '{err.name}'{hint}") from None
    except AttributeError:
        raise UserError(f"teacher '{arch}': module '{module}' has no '{name}'") from None
    if not _is_classifier_class(obj):
        raise UserError(
            f"teacher '{arch}' is neither a torch model nor a classifier with fit and predict_proba"
        )
    return obj


def estimator_factory(arch: str, params: Mapping[str, Any], seed: int) -> Callable[[], Any]:
    """A function returning a fresh, unfitted estimator; ``random_state`` is the seed unless
    the params set it (logged)."""
    cls = estimator_class(arch)
    kwargs = dict(params)
    if "random_state" in inspect.signature(cls).parameters and "random_state" not in kwargs:
        kwargs["random_state"] = seed
        log.info("teacher %s: random_state=%d (the teacher's seed)", cls.__name__, seed)
    try:
        cls(**kwargs)
    except TypeError as err:
        raise UserError(f"teacher '{arch}': {err}") from None
    return lambda: cls(**kwargs)


def log_probs(estimator: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, num_classes)`` float32 log-probabilities of a fitted estimator (floored, renormalised);
    its ``classes_`` place the columns, a class it never saw gets the floor."""
    full = np.zeros((len(x), num_classes))
    if not len(x):  # an empty validation split
        return full.astype(np.float32)
    proba = np.asarray(estimator.predict_proba(x), dtype=np.float64)
    full[:, np.asarray(estimator.classes_, dtype=np.int64)] = proba
    full = np.maximum(full, PROB_FLOOR)
    full /= full.sum(axis=1, keepdims=True)
    return np.log(full).astype(np.float32)


@dataclass
class SoftLabels:
    """Log-probabilities per split, the full-fit estimator, and how each training row's label
    was made (``fold[i]``: the fold whose model predicted row i, -1 for the full model)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    estimator: Any
    fold: np.ndarray
    fit_s: float


def soft_labels(
    make: Callable[[], Any],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    num_classes: int,
    folds: int,
    seed: int,
) -> SoftLabels:
    """Cross-fitted soft labels for ``splits['train']``, full-fit ones for val and test."""
    from sklearn.model_selection import StratifiedKFold

    x, y = splits["train"]
    if folds == 1 or folds < 0:
        raise UserError(f"teacher.oof_folds={folds}: use 0 (no cross-fitting) or at least 2")
    started = time.perf_counter()
    train = np.empty((len(y), num_classes), dtype=np.float32)
    fold = np.full(len(y), -1, dtype=np.int64)
    if folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (fit_rows, held_out) in enumerate(splitter.split(x, y)):
            model = make().fit(x[fit_rows], y[fit_rows])
            train[held_out] = log_probs(model, x[held_out], num_classes)
            fold[held_out] = k
    full = make().fit(x, y)
    if not folds:
        train[:] = log_probs(full, x, num_classes)
    out = {s: log_probs(full, splits[s][0], num_classes) for s in ("val", "test")}
    return SoftLabels(train, out["val"], out["test"], full, fold, time.perf_counter() - started)


def tree_nodes(estimator: Any) -> int | None:
    """Decision nodes plus leaves of a tree ensemble, where its library says; None otherwise."""
    if hasattr(estimator, "_predictors"):  # HistGradientBoosting
        return sum(len(p.nodes) for row in estimator._predictors for p in row)
    if hasattr(estimator, "tree_"):
        return int(estimator.tree_.node_count)
    if hasattr(estimator, "estimators_"):  # forests, GradientBoosting (a 2-D array of trees)
        trees = np.asarray(estimator.estimators_, dtype=object).ravel()
        if all(hasattr(t, "tree_") for t in trees):
            return int(sum(t.tree_.node_count for t in trees))
    if hasattr(estimator, "booster_"):  # LightGBM
        info = estimator.booster_.dump_model()["tree_info"]
        return int(sum(2 * t["num_leaves"] - 1 for t in info))
    if hasattr(estimator, "get_booster"):  # XGBoost: one dump line per node
        return int(sum(len(t.strip().splitlines()) for t in estimator.get_booster().get_dump()))
    if hasattr(estimator, "tree_count_"):  # CatBoost: symmetric trees
        depth = int(estimator.get_all_params()["depth"])
        return int(estimator.tree_count_ * (2 ** (depth + 1) - 1))
    return None


def predict_ms_per_1000(estimator: Any, x: np.ndarray, repeats: int = 5) -> float:
    """CPU milliseconds of ``predict_proba`` on 1,000 rows (``x`` tiled to 1,000), after one
    warm-up call; the median of ``repeats`` calls."""
    rows = np.resize(x, (1000, x.shape[1])).astype(x.dtype)
    estimator.predict_proba(rows)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        estimator.predict_proba(rows)
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def cost(labels: SoftLabels, x: np.ndarray) -> dict[str, Any]:
    """A fitted tabular teacher's cost: pickled size, tree nodes, CPU prediction time, fit time."""
    return {
        "kind": "sklearn",
        "size_bytes": len(pickle.dumps(labels.estimator)),
        "nodes": tree_nodes(labels.estimator),
        "predict_ms_per_1000": predict_ms_per_1000(labels.estimator, x),
        "fit_s": labels.fit_s,
    }


class TabularTeacher(nn.Module):
    """A fitted classifier as a frozen teacher module.

    ``indexed(x, index)`` is what a training step reads: the stored out-of-fold log-probabilities
    of training rows ``index``. ``forward(x)`` runs the full-fit estimator on any rows (on the
    CPU): validation and test accuracy, dry checks. It has no features and no parameters.
    """

    def __init__(self, estimator: Any, train_log_probs: Tensor, name: str) -> None:
        super().__init__()
        self.estimator = estimator
        self.register_buffer("train_log_probs", train_log_probs)
        self.num_classes = train_log_probs.shape[1]
        self.model_name = name
        self.feature_points: dict[str, tuple[str, str]] = {}

    def forward(self, x: Tensor) -> Tensor:
        rows = x.detach().float().cpu().reshape(len(x), -1).numpy()
        out = torch.from_numpy(log_probs(self.estimator, rows, self.num_classes))
        return out.to(x.device)

    def indexed(self, x: Tensor, index: Tensor) -> Tensor:
        rows = self.train_log_probs[index.to(self.train_log_probs.device)]
        return rows.to(x.device)
