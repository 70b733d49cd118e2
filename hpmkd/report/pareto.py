"""Accuracy against what a configuration costs at inference, the Pareto front marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from hpmkd.report.plots import configuration_labels, save_accuracy_figure  # noqa: E402


def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """Per point: True when no other point is at most as costly and at least as accurate, and
    strictly better in one of the two (equal points are all on the front)."""
    points = list(zip(costs, accuracies, strict=True))
    return [
        not any(c <= cost and a >= acc and (c < cost or a > acc) for c, a in points)
        for cost, acc in points
    ]


def plot_tradeoff(
    table: pd.DataFrame, column: str, path: Path, xlabel: str, title: str
) -> Path | None:
    """Test accuracy (mean over seeds) against ``column`` (log scale), one point per
    configuration, the Pareto front joined and labelled; None without any value to plot."""
    rows = table.assign(label=configuration_labels(table)).dropna(subset=[column, "test_acc_mean"])
    if rows.empty:
        return None
    front = pareto_front(rows[column].tolist(), rows["test_acc_mean"].tolist())
    on = rows[front].sort_values(column)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(
        rows[column],
        rows["test_acc_mean"],
        yerr=rows["test_acc_std"].fillna(0),
        fmt="o",
        color="0.6",
        capsize=2,
        label="configuration",
    )
    ax.step(on[column], on["test_acc_mean"], "-o", where="post", color="C3", label="Pareto front")
    for row in on.itertuples():
        ax.annotate(
            row.label,
            (getattr(row, column), row.test_acc_mean),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    return save_accuracy_figure(fig, ax, title, path)
