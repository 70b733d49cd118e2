"""A run as ACM sees it: its setting's meta-features, ACM's choice for it, and, once it has
finished, its row of the run history ACM learns from (METHODS.md 2.1 and 2.6).

Only runs that distil with a temperature and a KD weight (``kd``, ``multi_teacher``; the
strategies kd, takd, progressive, multi_teacher, hpmkd) describe a point of ACM's search space.
The result is measured on validation data (student best-validation accuracy over the teacher's
validation accuracy), so choosing a configuration never looks at the test set. A run without a
chain is recorded with the default epsilon (it had no effect there) and ``chain: false``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console

from hpmkd.data.splits import DataSplits
from hpmkd.hpm.acm import (
    DEFAULT_EPSILON,
    Prediction,
    choose_config,
    meta_features,
    print_report,
    relevant_rows,
)
from hpmkd.hpm.history import read_history


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
    teacher_params: int,
    teacher_acc: float | None,
    student_params: int,
    console: Console | None = None,
) -> Prediction:
    """ACM's choice for this run's setting from the history in its store, printed with the
    meta-features and the history rows it learned from."""
    phi = setting_features(data, teacher_params, student_params, teacher_acc)
    history = read_history(cfg.store.root)
    prediction = choose_config(
        phi,
        history,
        base_lr=float(cfg.recipe.optimizer.lr),
        base_epochs=int(cfg.recipe.epochs),
        min_history=cfg.strategy.acm.min_history,
        seed=cfg.seed,
    )
    print_report(console or Console(), phi, prediction, relevant_rows(history)[-20:])
    return prediction


def history_row(results: dict[str, Any], data: DataSplits) -> dict[str, Any] | None:
    """The history row of a finished run, or None when the run is not a point of ACM's space."""
    config = results["config"]
    teacher, method = results.get("teacher"), config.get("method")
    strategy = config.get("strategy") or {}
    if not teacher or not method or not teacher.get("val_acc") or results["acc_best"] is None:
        return None
    if not (strategy.get("components") or {}).get("som", True):
        return None
    alpha = _alpha(method)
    if alpha is None:
        return None
    chosen = (results.get("details") or {}).get("config")
    if chosen is None:
        schedule = config.get("temperature") or {}
        chosen = {
            "T0": float(schedule.get("t0", method["temperature"])),
            "alpha": alpha,
            "lr": float(config["recipe"]["optimizer"]["lr"]),
            "epochs": int(config["recipe"]["epochs"]),
            "epsilon": float(strategy.get("epsilon", DEFAULT_EPSILON)),
        }
    phi = setting_features(
        data, teacher["params"], results["student"]["params"], teacher["val_acc"]
    )
    return {
        "phi": phi,
        "config": chosen,
        "chain": "epsilon" in strategy,
        "result": {
            "retention": results["acc_best"] / teacher["val_acc"],
            "student_acc": results["acc_best"],
        },
        "data": results["data"]["name"],
        "strategy": results["strategy"],
        "run": config["paths"]["output_dir"],
        "time": time.time(),
    }
