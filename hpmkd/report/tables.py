"""Group runs over seeds: mean, sample std and n per configuration, plus the CE baseline gap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

GROUP = ["data", "recipe", "epochs", "teacher", "student", "strategy", "method"]
METRICS = [
    "test_acc", "test_acc_last", "acc_best", "acc_last", "teacher_acc", "retention",
    "forgetting_pct", "wall_time_s",
]  # fmt: skip


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, the settings that tell apart runs the ``GROUP`` columns alone would merge
    (``strategy.components.acm=false``, ``student.params.hidden=[91,45]``...), as one label."""
    keys = runs[GROUP].fillna("-").astype(str).agg("|".join, axis=1)
    settings = runs["settings"] if "settings" in runs else pd.Series([{}] * len(runs))
    varying: set[str] = set()
    for _, members in settings.groupby(keys):
        # a key some runs lack comes from a config schema change, not from a setting
        shared = set.intersection(*(set(m) for m in members))
        varying |= {n for n in shared if len({m[n] for m in members}) > 1}
    return settings.map(
        lambda s: ", ".join(f"{n}={s[n].strip(chr(34))}" for n in sorted(varying) if n in s) or "-"
    )


def with_group_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with missing group keys as "-" and the ``variant`` column added."""
    keys = runs[GROUP].fillna("-")
    return runs.assign(**{c: keys[c] for c in GROUP}, variant=variant_labels(runs))


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (every column of ``GROUP`` plus ``variant``), seeds aggregated.

    ``<metric>_mean``/``<metric>_std`` (sample std, NaN for one run), ``n``, and ``vs_ce``: the
    test-accuracy difference in points to the plain (CE-only) student of the same data, recipe,
    epochs and student architecture and size, when such runs exist.
    """
    runs = with_group_keys(runs)
    grouped = runs.groupby([*GROUP, "variant"], sort=False)
    table = grouped[METRICS].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["n"] = grouped.size()
    table["compression_ratio"] = grouped["compression_ratio"].first()
    table["student_params"] = grouped["student_params"].first()
    table["extra_params"] = grouped["extra_params"].first()
    table = table.reset_index()
    same = ["data", "recipe", "epochs", "student", "student_params"]
    plain = table[table["strategy"] == "plain"]
    baseline = plain.groupby(same)["test_acc_mean"].first()
    table["vs_ce"] = [
        row.test_acc_mean - baseline.get(tuple(getattr(row, c) for c in same), float("nan"))
        for row in table.itertuples()
    ]
    return table


HEADERS = [
    "data", "teacher", "student", "strategy", "method", "variant", "ratio", "extra params",
    "test acc %", "test acc % (last epoch)", "val acc % (best)", "teacher acc %", "retention %",
    "vs CE (pp)", "n", "time s",
]  # fmt: skip


def _cells(row: Any, *, pm: str, times: str, dash: str, text: Callable[[object], str]) -> list[str]:
    """One configuration's cells under ``HEADERS``: accuracies as mean ``pm`` std over seeds."""

    def stat(metric: str, scale: float = 1.0) -> str:
        mean, std = getattr(row, f"{metric}_mean"), getattr(row, f"{metric}_std")
        if pd.isna(mean):
            return dash
        return f"{scale * mean:.2f}" if pd.isna(std) else f"{scale * mean:.2f}{pm}{scale * std:.2f}"

    names = (row.data, row.teacher, row.student, row.strategy, row.method, row.variant)
    ratio = dash if pd.isna(row.compression_ratio) else f"{row.compression_ratio:.1f}{times}"
    vs_ce = dash if pd.isna(row.vs_ce) or row.strategy == "plain" else f"{row.vs_ce:+.2f}"
    return [
        *map(text, names), ratio, f"{int(row.extra_params):,}",
        *map(stat, ("test_acc", "test_acc_last", "acc_best", "teacher_acc")),
        stat("retention", 100), vs_ce, str(row.n), f"{row.wall_time_s_mean:.0f}",
    ]  # fmt: skip


def format_markdown(table: pd.DataFrame) -> str:
    """The paper-style view: one line per configuration, accuracies as mean ± std over seeds."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in table.itertuples():
        cells = _cells(row, pm=" ± ", times="x", dash="-", text=str)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_failures(failures: list[dict]) -> str:
    """The runs without completed results as a Markdown section (empty when there are none)."""
    if not failures:
        return ""
    columns = ("path", "status", "strategy", "method", "seed", "error")
    lines = ["", f"Failed runs: {len(failures)}", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]  # fmt: skip
    for failure in failures:
        cells = (str(failure.get(c, "-")).replace("|", "/") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_latex(table: pd.DataFrame) -> str:
    """A booktabs table for a paper: the columns of the Markdown table."""

    def tex(text: object) -> str:
        return str(text).replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")

    lines = [
        f"\\begin{{tabular}}{{{'l' * 6}{'r' * (len(HEADERS) - 6)}}}",
        "\\toprule",
        " & ".join(map(tex, HEADERS)) + " \\\\",
        "\\midrule",
    ]
    for row in table.itertuples():
        cells = _cells(row, pm=" $\\pm$ ", times="$\\times$", dash="--", text=tex)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
