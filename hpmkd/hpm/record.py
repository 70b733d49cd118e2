"""A run as ACM sees it: its setting's meta-features, ACM's choice for it, and, once it has
finished, its row of the run history ACM learns from (METHODS.md 2.1 and 2.6).

Only runs that distil with a temperature and a KD weight (``kd``, ``multi_teacher``; the
strategies kd, takd, progressive, multi_teacher, hpmkd) describe a point of ACM's search space.
A row's result is the one definition of retention used everywhere (results.json, reports): the
student's test accuracy (at the best-validation epoch) over the teacher's test accuracy. ACM thus
learns from earlier runs' test results, while a run's own choice is made before it is trained
and never looks at its test set; the meta-feature ``teacher_acc`` is the teacher's validation
accuracy, as known when the choice is made. Rows written before this (no ``"split": "test"`` in
their result) hold validation accuracies; they stay readable and usable.

A row records only the settings the run used: epsilon only for a run with a chain (progressive,
hpmkd with PDC on), ``"chain"`` says which.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from hpmkd.data.splits import DataSplits
from hpmkd.hpm.acm import Prediction, choose_config, meta_features, print_report, relevant_rows
from hpmkd.hpm.source import HistorySource


def _alpha(method: dict[str, Any]) -> float | None:
    if method["name"] == "multi_teacher":
        return float(method["alpha"])
    if method["name"] == "kd":
        return method["kd_weight"] / (method["kd_weight"] + method["ce_weight"])
    return None


def setting_features(
    data: DataSplits, params_teacher: int, params_student: int, teacher_acc: float | None
) -> dict[str, float]:
    """ACM's meta-features of a setting: the data, the teacher's size and validation accuracy,
    the student's size."""
    return meta_features(
        n_train=len(data.y_train),
        n_classes=data.num_classes,
        input_dim=math.prod(data.input_shape),
        params_teacher=params_teacher,
        params_student=params_student,
        labels=data.y_train,
        teacher_acc=teacher_acc,
    )


def consult_acm(
    cfg: Any,
    data: DataSplits,
    *,
    source: HistorySource,
    chain: bool,
    teacher_params: int,
    teacher_acc: float | None,
    student_params: int,
    console: Console | None = None,
) -> Prediction:
    """ACM's choice for this run's setting from the rows of ``source`` (epsilon too when the run
    has a ``chain``), printed with the meta-features and the history rows it learned from."""
    phi = setting_features(data, teacher_params, student_params, teacher_acc)
    history = source.rows()
    prediction = choose_config(
        phi,
        history,
        base_lr=float(cfg.recipe.optimizer.lr),
        base_epochs=int(cfg.recipe.epochs),
        chain=chain,
        min_history=cfg.strategy.acm.min_history,
        seed=cfg.strategy.acm.seed,
    )
    where = f"{source.mode}, {source.path} ({len(history)} rows)"
    print_report(console or Console(), phi, prediction, relevant_rows(history), history=where)
    return prediction


def has_chain(strategy: Mapping[str, Any]) -> bool:
    """Whether a run of this strategy config grows a chain (and so uses epsilon)."""
    components = strategy.get("components") or {}
    return (
        "epsilon" in strategy
        and components.get("pdc", True)
        and (strategy.get("max_length") or 0) > 0
    )


def history_row(results: dict[str, Any], data: DataSplits) -> dict[str, Any] | None:
    """The history row of a finished run, or None when the run is not a point of ACM's space."""
    config = results["config"]
    teacher, method = results.get("teacher"), config.get("method")
    strategy = config.get("strategy") or {}
    if not teacher or not method or not teacher.get("test_acc") or results["test_acc"] is None:
        return None
    if method.get("instance"):  # a method passed as an instance (the Python API): settings unknown
        return None
    if not (strategy.get("components") or {}).get("som", True):
        return None
    alpha = _alpha(method)
    if alpha is None:
        return None
    chain = has_chain(strategy)
    chosen = (results.get("details") or {}).get("config")
    if chosen is None:
        schedule = config.get("temperature") or {}
        chosen = {
            "T0": float(schedule.get("t0", method["temperature"])),
            "alpha": alpha,
            "lr": float(config["recipe"]["optimizer"]["lr"]),
            "epochs": int(config["recipe"]["epochs"]),
        }
        if chain:
            chosen["epsilon"] = float(strategy["epsilon"])
    elif not chain:
        chosen = {k: v for k, v in chosen.items() if k != "epsilon"}
    phi = setting_features(
        data, teacher["params"], results["student"]["params"], teacher.get("val_acc")
    )
    return {
        "phi": phi,
        "config": chosen,
        "chain": chain,
        "result": {
            "retention": results["test_acc"] / teacher["test_acc"],
            "student_acc": results["test_acc"],
            "teacher_acc": teacher["test_acc"],
            "split": "test",
        },
        "data": results["data"]["name"],
        "strategy": results["strategy"],
        "run": config["paths"]["output_dir"],
        "time": time.time(),
    }
