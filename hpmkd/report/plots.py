"""PNG figures from a seed-aggregated table (``summarise``): what a paper's figures show."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def configuration_label(row: pd.Series) -> str:
    label = (
        row["strategy"]
        if row["strategy"] == row["method"]
        else f"{row['strategy']}/{row['method']}"
    )
    if row["variant"] != "-":
        label += f" [{row['variant']}]"
    return label


def plot_accuracy_bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Test accuracy (mean, error bar = sample std over seeds) per configuration."""
    rows = table.sort_values("test_acc_mean")
    labels = [configuration_label(r) for _, r in rows.iterrows()]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    ax.barh(labels, rows["test_acc_mean"], xerr=rows["test_acc_std"].fillna(0), color="tab:blue")
    low = (rows["test_acc_mean"] - rows["test_acc_std"].fillna(0)).min()
    high = (rows["test_acc_mean"] + rows["test_acc_std"].fillna(0)).max()
    ax.set_xlim(low - 0.2 * (high - low) - 0.5, high + 0.1 * (high - low) + 0.5)
    ax.set_xlabel("test accuracy % (mean ± std over seeds)")
    ax.set_title(title)
    for y, (_, row) in enumerate(rows.iterrows()):
        ax.text(row["test_acc_mean"], y, f" n={row['n']}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_ratio(table: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Test accuracy against compression ratio (log scale), one line per strategy/method;
    None when no strategy was run at more than one ratio."""
    rows = table.dropna(subset=["compression_ratio"])
    series = {
        label: group.sort_values("compression_ratio")
        for label, group in rows.groupby(rows["strategy"] + "/" + rows["method"])
        if group["compression_ratio"].nunique() > 1
    }
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in series.items():
        ax.errorbar(
            group["compression_ratio"], group["test_acc_mean"],
            yerr=group["test_acc_std"].fillna(0), marker="o", capsize=3, label=label,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (teacher parameters / student parameters)")
    ax.set_ylabel("test accuracy % (mean ± std)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
