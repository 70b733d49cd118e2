"""PNG figures from a seed-aggregated table (``summarise``): what a paper's figures show."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from hpmkd.report.tables import KEYS  # noqa: E402


def configuration_labels(table: pd.DataFrame) -> list[str]:
    """Short labels: strategy/method plus only the settings where a row differs from most rows
    (``acm=false`` rather than six ``strategy.components.*`` values); a setting without a
    majority value (a scan: ``target_ratio=5``, ``=10``...) shows in every label."""
    pairs = [_pairs(v) for v in table["variant"]]
    common = {}
    for key in {k for p in pairs for k in p}:
        values = [p[key] for p in pairs if key in p]
        value = max(set(values), key=values.count)
        if values.count(value) > len(values) / 2:
            common[key] = value
    labels = []
    for name, settings in zip(_names(table), pairs, strict=True):
        odd = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in settings.items() if v != common.get(k)]
        labels.append(f"{name} [{', '.join(odd)}]" if odd else name)
    return labels


def _names(table: pd.DataFrame) -> list[str]:
    """``strategy/method``, or one word where they agree (``kd``)."""
    pairs = zip(table["strategy"], table["method"], strict=True)
    return [s if s == m else f"{s}/{m}" for s, m in pairs]


def _pairs(variant: str) -> dict[str, str]:
    if variant == "-":
        return {}
    return dict(item.split("=", 1) for item in variant.split(", "))


def plot_accuracy_bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Test accuracy (mean, error bar = sample std over seeds) per configuration."""
    rows = table.sort_values("test_acc_mean")
    labels = configuration_labels(rows)
    names = _names(rows)
    colors = {name: f"C{i}" for i, name in enumerate(sorted(set(names)))}
    std = rows["test_acc_std"].fillna(0)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    ax.barh(labels, rows["test_acc_mean"], xerr=std, color=[colors[n] for n in names])
    low, high = (rows["test_acc_mean"] - std).min(), (rows["test_acc_mean"] + std).max()
    ax.set_xlim(low - 0.2 * (high - low) - 0.5, high + 0.1 * (high - low) + 0.5)
    ax.set_xlabel("test accuracy % (mean ± std over seeds)")
    ax.set_title(title)
    for y, (mean, err, n) in enumerate(zip(rows["test_acc_mean"], std, rows["n"], strict=True)):
        ax.text(mean + err, y, f" n={n}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_ratio(table: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Test accuracy against compression ratio (log scale), one line per strategy/method;
    None when no strategy was run at more than one ratio."""
    rows = table.assign(compression_ratio=scan_ratios(table)).dropna(subset=["compression_ratio"])
    series = {
        label: group.sort_values("compression_ratio")
        for label, group in rows.groupby(_names(rows))
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
    ticks = sorted(rows["compression_ratio"].round(1).unique())
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("compression ratio (teacher parameters / student parameters)")
    return save_accuracy_figure(fig, ax, title, path)


def scan_ratios(table: pd.DataFrame) -> pd.Series:
    """Compression ratios; a run without a teacher (plain) takes the ratio of the distilled runs
    with its data and student size, when they agree, to sit beside them in a compression scan."""
    size = ["data", "student", "student_params"]
    known = table.dropna(subset=["compression_ratio"]).groupby(size)["compression_ratio"]
    unique = known.first()[known.nunique() == 1]
    borrowed = [unique.get(tuple(row[size])) for _, row in table.iterrows()]
    return table["compression_ratio"].fillna(pd.Series(borrowed, index=table.index, dtype=float))


CURVES = {
    "val_acc": "validation accuracy %",
    "temperature": "temperature",
    "attention_entropy": "attention entropy (log K: uniform, 0: one teacher)",
}


def plot_curves(runs: pd.DataFrame, table: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Per-epoch curves, averaged over seeds, one line per configuration: validation accuracy,
    and the temperature and attention entropy where runs logged them and they change; ``runs``
    as ``with_group_keys`` returns them (repeats left out)."""
    runs = runs[~runs["repeat"]]
    present = [n for n in CURVES if len({v for c in runs["curves"] for v in c.get(n) or []}) > 1]
    if not present:
        return None
    keys = [tuple(r[k] for k in KEYS) for _, r in table.iterrows()]
    labels = dict(zip(keys, configuration_labels(table), strict=True))
    palette = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20").colors
    colors = {key: palette[i % len(palette)] for i, key in enumerate(keys)}
    fig, axes = plt.subplots(len(present), 1, figsize=(11, 3 * len(present)), squeeze=False)
    for key, group in runs.groupby(KEYS, sort=False):
        for ax, name in zip(axes[:, 0], present, strict=True):
            curves = [c[name] for c in group["curves"] if c.get(name)]
            if not curves:
                continue
            length = min(map(len, curves))
            mean = [_mean([c[i] for c in curves]) for i in range(length)]
            ax.plot(range(1, length + 1), mean, label=labels[key], color=colors[key])
    for ax, name in zip(axes[:, 0], present, strict=True):
        ax.set_ylabel(CURVES[name], fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    axes[0, 0].set_title(title)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else float("nan")


def save_accuracy_figure(fig: plt.Figure, ax: plt.Axes, title: str, path: Path) -> Path:
    """Finish a test-accuracy figure (y label, title, grid, legend) and write it as a PNG."""
    ax.set_ylabel("test accuracy % (mean ± std)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
