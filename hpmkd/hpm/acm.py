"""Adaptive Configuration Manager (ACM): choose distillation settings from past runs.

METHODS.md section 2, item 1. A run is described by meta-features phi (``META_FEATURES``) and
configured by c = (T0, alpha, lr, epochs, epsilon) (``CONFIG_KEYS``). A random forest g(phi, c) -> r
is fitted on the run history H (``hpmkd.hpm.history``), where r is the target result (retention by
default: the student's test accuracy over the teacher's, as measured by the runs of the history),
and the chosen configuration is the argmax of g over a candidate grid for the current phi. With
fewer than ``min_history`` relevant runs ACM does not guess: it returns the documented defaults
(``default_config``).

epsilon is the chain's threshold (PDC): only runs with a chain have one, and a row without it is
never given an invented value. So the choice is made in two steps. (1) A forest fitted on every
relevant row, over phi and ``RUN_KEYS`` (T0, alpha, lr, epochs), picks those four. (2) For a run
with a chain, a second forest fitted only on the rows that have an epsilon, over phi and every
config key, picks epsilon for the four chosen values; with fewer than ``min_history`` such rows
epsilon keeps its default. epsilon's effect is thus learned only from runs it had an effect on,
and the rows without a chain still teach T0, alpha, lr and epochs.

A history row is *relevant* when its ``phi`` has every meta-feature, its ``config`` every run key
and its ``result`` the target, all as finite numbers. Rows from any dataset count: the
meta-features are what lets the forest carry what it learned across settings. A row written before
the history recorded epsilon only for chains (``"chain": false`` with an ``"epsilon"``) is read as
having no epsilon.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.ensemble import RandomForestRegressor

from hpmkd.errors import UserError, unknown_name

META_FEATURES = (
    "n_train",
    "n_classes",
    "input_dim",
    "params_teacher",
    "params_student",
    "compression_ratio",
    "label_entropy",
    "class_imbalance",
    "teacher_acc",
)
CONFIG_KEYS = ("T0", "alpha", "lr", "epochs", "epsilon")
RUN_KEYS = CONFIG_KEYS[:-1]  # what every KD-style run has; epsilon only a run with a chain
UNKNOWN_TEACHER_ACC = -1.0
REPORT_ROWS = 20

# The cold-start defaults: T0 of the temperature scheduler (MTS), the standard CIFAR benchmark's KD
# weight on the KL term (CE 0.1 + KL 0.9) and the chain's improvement threshold in pp (PDC).
DEFAULT_T0 = 4.0
DEFAULT_ALPHA = 0.9
DEFAULT_EPSILON = 0.5

# Candidate axes; "lr" holds multipliers of the recipe's learning rate, and "epochs" is absent
# because the epoch budget is the user's: the default grid keeps the recipe's.
DEFAULT_SPACE: dict[str, tuple[float, ...]] = {
    "T0": (2.0, 3.0, 4.0, 5.0, 6.0),
    "alpha": (0.5, 0.7, 0.9),
    "lr": (0.5, 1.0, 2.0),
    "epsilon": (0.25, 0.5, 1.0),
}


def meta_features(
    *,
    n_train: int,
    n_classes: int,
    input_dim: int,
    params_teacher: int,
    params_student: int,
    labels: torch.Tensor,
    teacher_acc: float | None,
) -> dict[str, float]:
    """The meta-features phi of one distillation setting, keyed as ``META_FEATURES``.

    ``input_dim`` is the number of input values of one sample (the product of its shape).
    ``labels`` are the training labels (class indices): ``label_entropy`` is the entropy of their
    distribution divided by log(n_classes), so 1 means balanced and 0 a single class;
    ``class_imbalance`` is the largest class count over the smallest, a class absent from the
    labels counting as 1 sample so that the ratio stays finite. ``teacher_acc`` is recorded as
    given (hpmkd records percentages), or -1.0 when unknown (None or NaN).
    """
    if params_student <= 0:
        raise ValueError(f"params_student must be positive, got {params_student}")
    counts = _class_counts(labels, n_classes)
    return {
        "n_train": float(n_train),
        "n_classes": float(n_classes),
        "input_dim": float(input_dim),
        "params_teacher": float(params_teacher),
        "params_student": float(params_student),
        "compression_ratio": params_teacher / params_student,
        "label_entropy": _normalised_entropy(counts),
        "class_imbalance": float(counts.max() / counts.clamp(min=1).min()),
        "teacher_acc": _known_or(teacher_acc, UNKNOWN_TEACHER_ACC),
    }


def _class_counts(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    flat = labels.detach().flatten().long().cpu()
    if flat.numel() == 0:
        raise ValueError("meta_features needs at least one training label")
    if flat.min() < 0 or flat.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {flat.min()}..{flat.max()}")
    return torch.bincount(flat, minlength=n_classes).double()


def _normalised_entropy(counts: torch.Tensor) -> float:
    if len(counts) < 2:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum() / math.log(len(counts)))


def _known_or(value: float | None, fallback: float) -> float:
    return fallback if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True)
class ACMConfig:
    T0: float
    alpha: float
    lr: float
    epochs: int
    epsilon: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_config(base_lr: float, base_epochs: int) -> ACMConfig:
    """The documented cold-start configuration; lr and epochs are the recipe's."""
    return ACMConfig(DEFAULT_T0, DEFAULT_ALPHA, float(base_lr), int(base_epochs), DEFAULT_EPSILON)


def candidate_grid(
    base_lr: float, base_epochs: int, space: Mapping[str, Sequence] | None = None
) -> list[ACMConfig]:
    """Every combination of the candidate axes, in ``CONFIG_KEYS`` order (T0 varies slowest).

    ``space`` replaces any axis of ``DEFAULT_SPACE``: values for T0, alpha and epsilon as they are,
    for lr multipliers of ``base_lr``, for epochs absolute epoch counts (default: ``base_epochs``).
    """
    axes = _axes(base_lr, base_epochs, space)
    return [
        ACMConfig(float(t0), float(alpha), float(lr), int(epochs), float(epsilon))
        for t0, alpha, lr, epochs, epsilon in itertools.product(*(axes[k] for k in CONFIG_KEYS))
    ]


def _axes(
    base_lr: float, base_epochs: int, space: Mapping[str, Sequence] | None
) -> dict[str, Sequence]:
    axes: dict[str, Sequence] = {**DEFAULT_SPACE, "epochs": (base_epochs,)}
    for name, values in (space or {}).items():
        if name not in axes:
            raise unknown_name("ACM search axis", name, CONFIG_KEYS)
        if len(values) == 0:
            raise UserError(f"ACM search axis '{name}' has no values")
        axes[name] = values
    axes["lr"] = [base_lr * multiplier for multiplier in axes["lr"]]
    return axes


@dataclass
class Prediction:
    config: ACMConfig
    source: str  # "history" or "cold_start"
    predicted: float | None
    n_history: int  # relevant rows, those T0, alpha, lr and epochs were learned from
    reason: str
    importances: dict[str, float] = field(default_factory=dict)
    n_chain_history: int = 0  # relevant rows with an epsilon (runs with a chain)
    epsilon_source: str = "default"  # "history", "default", or "no chain" (the run has none)


def relevant_rows(history: Sequence[Mapping], target: str = "retention") -> list[Mapping]:
    """The rows ACM can learn from: every meta-feature, run key and the target, all finite."""
    return [row for row in history if _training_pair(row, target, RUN_KEYS) is not None]


def _finite(section: Any, keys: Sequence[str]) -> list[float] | None:
    if not isinstance(section, Mapping):
        return None
    values = [section.get(k) for k in keys]
    if all(_is_number(v) and math.isfinite(v) for v in values):
        return [float(v) for v in values]
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _training_pair(
    row: Mapping, target: str, keys: Sequence[str]
) -> tuple[list[float], float] | None:
    if "epsilon" in keys and row.get("chain") is False:
        return None  # an old row's epsilon of a run without a chain: not a value it used
    phi = _finite(row.get("phi"), META_FEATURES)
    config = _finite(row.get("config"), keys)
    result = _finite(row.get("result"), (target,))
    if phi is None or config is None or result is None:
        return None
    return phi + config, result[0]


def _runs(n: int) -> str:
    return f"{n} relevant run{'' if n == 1 else 's'} in the history"


def choose_config(
    phi: Mapping[str, float],
    history: Sequence[Mapping],
    *,
    base_lr: float,
    base_epochs: int,
    chain: bool = True,
    min_history: int = 5,
    target: str = "retention",
    space: Mapping[str, Sequence] | None = None,
    seed: int = 0,
) -> Prediction:
    """The candidate configuration with the best predicted ``target`` for this ``phi``.

    T0, alpha, lr and epochs come from every relevant row; for a run with a ``chain``, epsilon
    from the rows that have one (module docstring); without a chain epsilon keeps its default,
    unused. Ties go to the candidate nearest the defaults (relative distance per axis). With
    fewer than ``min_history`` relevant rows (at least one is always needed) the result is
    ``default_config`` with source "cold_start". ``seed`` seeds the forests: a fixed setting, so
    that one history gives runs with different seeds the same choice.
    """
    missing = [k for k in META_FEATURES if k not in phi]
    if missing:
        raise ValueError(f"phi lacks meta-features: {', '.join(missing)}")
    axes = _axes(base_lr, base_epochs, space)  # first, so a bad space fails on cold start
    usable = _pairs(history, target, RUN_KEYS)
    with_epsilon = _pairs(history, target, CONFIG_KEYS)
    needed = max(min_history, 1)
    default = default_config(base_lr, base_epochs)
    epsilon_source = "default" if chain else "no chain"
    if len(usable) < needed:
        return Prediction(
            config=default,
            source="cold_start",
            predicted=None,
            n_history=len(usable),
            reason=f"{_runs(len(usable))}, fewer than {needed}: documented defaults",
            n_chain_history=len(with_epsilon),
            epsilon_source=epsilon_source,
        )
    phi_values = [float(phi[k]) for k in META_FEATURES]
    runs = [
        replace(default, T0=float(t0), alpha=float(alpha), lr=float(lr), epochs=int(epochs))
        for t0, alpha, lr, epochs in itertools.product(*(axes[k] for k in RUN_KEYS))
    ]
    forest = _forest(usable, seed)
    best, predicted = _argmax(forest, phi_values, runs, RUN_KEYS, default)
    importances = dict(zip(META_FEATURES + RUN_KEYS, _importances(forest), strict=True))
    reason = (
        f"{_runs(len(usable))}: random-forest argmax of predicted {target} "
        f"over {len(runs)} candidate configurations"
    )
    if chain and len(with_epsilon) >= needed:
        chain_forest = _forest(with_epsilon, seed)
        candidates = [replace(best, epsilon=float(e)) for e in axes["epsilon"]]
        best, predicted = _argmax(chain_forest, phi_values, candidates, CONFIG_KEYS, default)
        importances["epsilon"] = _importances(chain_forest)[-1]
        epsilon_source = "history"
        reason += f"; epsilon from the {len(with_epsilon)} of them with a chain"
    elif chain:
        reason += (
            f"; {len(with_epsilon)} of them with a chain, fewer than {needed}: default epsilon"
        )
    return Prediction(
        config=best,
        source="history",
        predicted=predicted,
        n_history=len(usable),
        reason=reason,
        importances=importances,
        n_chain_history=len(with_epsilon),
        epsilon_source=epsilon_source,
    )


def _pairs(
    history: Sequence[Mapping], target: str, keys: Sequence[str]
) -> list[tuple[list[float], float]]:
    return [p for p in (_training_pair(row, target, keys) for row in history) if p is not None]


def _forest(pairs: Sequence[tuple[list[float], float]], seed: int) -> RandomForestRegressor:
    forest = RandomForestRegressor(n_estimators=200, random_state=seed, min_samples_leaf=1)
    forest.fit(np.array([x for x, _ in pairs]), np.array([y for _, y in pairs]))
    return forest


def _importances(forest: RandomForestRegressor) -> list[float]:
    return [float(v) for v in forest.feature_importances_]


def _argmax(
    forest: RandomForestRegressor,
    phi_values: list[float],
    candidates: Sequence[ACMConfig],
    keys: Sequence[str],
    default: ACMConfig,
) -> tuple[ACMConfig, float]:
    values = [[float(getattr(c, k)) for k in keys] for c in candidates]
    scores = forest.predict(np.array([phi_values + v for v in values]))
    # A forest that never split on a configuration key predicts the same for every candidate:
    # ties go to the candidate nearest the documented defaults, never to a corner of the grid.
    best = max(
        range(len(candidates)),
        key=lambda i: (round(scores[i], 9), -_distance(candidates[i], default, keys)),
    )
    return candidates[best], float(scores[best])


def _distance(config: ACMConfig, default: ACMConfig, keys: Sequence[str]) -> float:
    pairs = ((float(getattr(config, k)), float(getattr(default, k))) for k in keys)
    return sum(abs(a - b) / abs(b) if b else abs(a) for a, b in pairs)


def print_report(
    console: Console,
    phi: Mapping[str, float],
    prediction: Prediction,
    rows: Sequence[Mapping],
    history: str | None = None,
) -> None:
    """Print phi, the chosen configuration and why, and the last ``REPORT_ROWS`` history rows
    (``history``: which history they come from, in words)."""
    console.print(_phi_table(phi, prediction.importances))
    console.print(_config_table(prediction))
    if history:
        console.print(f"history: {history}")
    console.print(f"source: {prediction.source} (epsilon: {prediction.epsilon_source})")
    if prediction.predicted is not None:
        console.print(f"predicted result: {prediction.predicted:.4g}")
    console.print(f"reason: {prediction.reason}")
    console.print(_history_table(rows))


def _fmt(value: Any) -> str:
    if _is_number(value):
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"
    return "-" if value is None else str(value)


def _importance(importances: Mapping[str, float], key: str) -> str:
    return f"{importances[key]:.3f}" if key in importances else "-"


def _phi_table(phi: Mapping[str, float], importances: Mapping[str, float]) -> Table:
    table = Table(title="ACM meta-features")
    for column in ("feature", "value", "importance"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for key in META_FEATURES:
        table.add_row(key, _fmt(phi.get(key)), _importance(importances, key))
    return table


def _config_table(prediction: Prediction) -> Table:
    table = Table(title=f"ACM configuration ({prediction.source})")
    for column in ("parameter", "chosen", "importance"):
        table.add_column(column, justify="left" if column == "parameter" else "right")
    for key, value in prediction.config.as_dict().items():
        table.add_row(key, _fmt(value), _importance(prediction.importances, key))
    return table


def _used(row: Mapping, config: Mapping, key: str) -> Any:
    return None if key == "epsilon" and row.get("chain") is False else config.get(key)


def _history_table(rows: Sequence[Mapping]) -> Table:
    shown = list(rows)[-REPORT_ROWS:]
    title = (
        f"run history: the last {len(shown)} of {len(rows)} rows" if rows else "run history: empty"
    )
    table = Table(title=title)
    results = ("retention", "student_acc")
    for column in ("data", "strategy", *CONFIG_KEYS, *results):
        table.add_column(column)
    for row in shown:
        config, result = row.get("config") or {}, row.get("result") or {}
        table.add_row(
            _fmt(row.get("data")),
            _fmt(row.get("strategy")),
            *(_fmt(_used(row, config, k)) for k in CONFIG_KEYS),
            *(_fmt(result.get(k)) for k in results),
        )
    return table
