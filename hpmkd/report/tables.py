"""Group runs over seeds: mean, sample std and n per configuration, plus the CE baseline gap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from hpmkd.report.collect import identity

GROUP = ["data", "recipe", "epochs", "teacher", "student", "strategy", "method"]
# one configuration, one table row: ``config`` tells apart what the labels might not
KEYS = [*GROUP, "variant", "config"]
METRICS = [
    "test_acc", "test_acc_last", "acc_best", "acc_last", "teacher_acc", "retention",
    "forgetting_pct", "time_s", "student_latency_ms", "teacher_latency_ms",
]  # fmt: skip


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, every setting of its configuration's identity that differs between runs the
    ``GROUP`` columns alone would merge (``temperature.name=mts``, ``strategy.components.acm=
    false``...), as one label; a node a run lacks altogether reads ``temperature=unset``."""
    keys = runs[GROUP].fillna("-").astype(str).agg("|".join, axis=1)
    settings = runs["settings"].map(identity)
    labels = pd.Series("-", index=runs.index)
    for _, members in settings.groupby(keys):
        names = set().union(*members)
        varying = sorted(n for n in names if len({m.get(n) for m in members}) > 1)
        for index, member in members.items():
            shown = dict.fromkeys(_setting(member, n) for n in varying)
            labels[index] = ", ".join(s for s in shown if s) or "-"
    return labels


def _setting(settings: dict[str, str], name: str) -> str:
    """``name=value``; for a setting the run lacks, its topmost missing node, ``node=unset``
    (empty where the run has a value above it: that value shows instead)."""
    if name in settings:
        return f"{name}={settings[name].strip(chr(34))}"
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        node = ".".join(parts[:depth])
        if node in settings:
            return ""
        if not any(k.startswith(f"{node}.") for k in settings):
            return f"{node}=unset"
    return ""


def with_group_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with missing group keys as "-", the ``variant`` column, and ``repeat``: true for
    each run a newer run of the same configuration and seed supersedes."""
    keys = runs[GROUP].fillna("-")
    runs = runs.assign(**{c: keys[c] for c in GROUP}, variant=variant_labels(runs))
    oldest_first = runs.sort_values("finished", kind="stable").groupby([*KEYS, "seed"])
    return runs.assign(repeat=oldest_first.cumcount(ascending=False) > 0)


def _choices(values: pd.Series) -> str | None:
    """The distinct values over a configuration's seeds; their count where there are many."""
    distinct = list(dict.fromkeys(values.dropna()))
    if not distinct:
        return None
    return "; ".join(distinct) if len(distinct) <= 3 else f"{len(distinct)} distinct choices"


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (``KEYS``), seeds aggregated; a configuration and seed run more
    than once counts once, with its newest results.

    ``<metric>_mean``/``<metric>_std`` (sample std, NaN for one run), ``n`` (distinct seeds),
    ``repeats`` (older runs of a configuration and seed left out), ``acm`` (HPM-KD's chosen
    configurations), and ``vs_ce``: the test-accuracy difference in points to the plain
    (CE-only) student of the same data, recipe, epochs and student architecture and size, when
    such runs exist.
    """
    runs = with_group_keys(runs)
    grouped = runs[~runs["repeat"]].groupby(KEYS, sort=False)
    table = grouped[METRICS].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table["n"] = grouped["seed"].nunique()
    table["repeats"] = runs.groupby(KEYS, sort=False)["repeat"].sum().astype(int)
    table["acm"] = grouped["acm"].agg(_choices)
    table["compression_ratio"] = grouped["compression_ratio"].first()
    table["student_params"] = grouped["student_params"].first()
    table["extra_params"] = grouped["extra_params"].first()
    table["student_flops"] = grouped["student_flops"].first()
    table["teacher_params"] = grouped["teacher_params"].first()
    # in the order configurations first ran, a repeat's older run included
    table = table.reindex(runs.groupby(KEYS, sort=False).size().index).reset_index()
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
# deployment cost, shown where a run recorded it (results.json ``cost``)
COST_HEADERS = ["student params", "student FLOPs", "latency ms", "teacher params"]
COST_COLUMNS = ["student_flops", "student_latency_ms_mean", "teacher_params"]


def has_cost(table: pd.DataFrame) -> bool:
    return any(c in table and bool(table[c].notna().any()) for c in COST_COLUMNS)


def cost_cells(row: Any, dash: str) -> list[str]:
    """student params, FLOPs, latency (mean over seeds, ms) and teacher params."""

    def count(value: float) -> str:
        return dash if pd.isna(value) else f"{int(value):,}"

    latency = getattr(row, "student_latency_ms_mean", float("nan"))
    return [
        count(row.student_params), count(getattr(row, "student_flops", float("nan"))),
        dash if pd.isna(latency) else f"{latency:.3f}",
        count(getattr(row, "teacher_params", float("nan"))),
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
        stat("retention", 100), vs_ce, str(row.n), f"{row.time_s_mean:.0f}",
    ]  # fmt: skip


def _markdown(rows: list[list[str]], headers: list[str]) -> str:
    """A GitHub Markdown table (pandas' to_markdown); ``|`` inside a cell escaped."""
    frame = pd.DataFrame(rows, columns=headers, dtype=object)
    frame = frame.map(lambda text: str(text).replace("|", "\\|"))
    return frame.to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"


def format_markdown(table: pd.DataFrame) -> str:
    """The paper-style view: one line per configuration, accuracies as mean ± std over seeds;
    what ACM chose where HPM-KD rows have it; how many repeated runs were left out."""
    acm, cost = has_acm(table), has_cost(table)
    headers = [*HEADERS, *(COST_HEADERS if cost else []), *(["ACM choice"] if acm else [])]
    rows = []
    for row in table.itertuples():
        cells = _cells(row, pm=" ± ", times="x", dash="-", text=str)
        cells += cost_cells(row, "-") if cost else []
        rows.append([*cells, acm_cell(row)] if acm else cells)
    text = _markdown(rows, headers)
    if repeats := repeats_note(table):
        text += f"\n{repeats}\n"
    return text


def has_acm(table: pd.DataFrame) -> bool:
    return "acm" in table and bool(table["acm"].notna().any())


def acm_cell(row: Any) -> str:
    """What ACM chose for a row's seeds; "-" where no run has a choice (pandas: NaN)."""
    return row.acm if isinstance(row.acm, str) else "-"


def repeats_note(table: pd.DataFrame) -> str:
    """How many runs repeated a configuration and seed and were left out; empty for none."""
    dropped = int(table["repeats"].sum()) if "repeats" in table else 0
    if not dropped:
        return ""
    runs = "repeat" if dropped == 1 else "repeats"
    return f"{dropped} {runs} dropped (the same configuration and seed ran again; newest kept)"


FAILURE_COLUMNS = ("path", "status", "strategy", "method", "seed", "error")
SET_ASIDE_COLUMNS = ("path", "reason", "strategy", "method", "seed")


def format_failures(failures: list[dict]) -> str:
    """The runs without completed results as a Markdown section (empty when there are none)."""
    return _section(f"Failed runs: {len(failures)}", failures, FAILURE_COLUMNS)


def format_set_aside(records: list[dict]) -> str:
    """The results.json in no row (another schema, unreadable) as a Markdown section."""
    return _section(f"Set aside, not merged: {len(records)}", records, SET_ASIDE_COLUMNS)


def cell(record: dict, column: str) -> str:
    value = record.get(column)
    return "-" if value is None else str(value)


def _section(title: str, records: list[dict], columns: tuple[str, ...]) -> str:
    if not records:
        return ""
    rows = [[cell(record, c) for c in columns] for record in records]
    return f"\n{title}\n\n" + _markdown(rows, list(columns))


def format_latex(table: pd.DataFrame) -> str:
    """A booktabs table for a paper (pandas' Styler): the columns of the Markdown table, names
    escaped for LaTeX, numbers with ``$\\pm$`` and ``$\\times$``."""
    names = HEADERS[:6]  # the text columns: data ... variant
    cost = has_cost(table)
    headers = [*HEADERS, *(COST_HEADERS if cost else [])]
    rows = [_cells(row, pm=" $\\pm$ ", times="$\\times$", dash="--", text=str)
            + (cost_cells(row, "--") if cost else []) for row in table.itertuples()]  # fmt: skip
    frame = pd.DataFrame(rows, columns=headers, dtype=object)
    styler = frame.style.hide(axis="index").format(escape="latex", subset=names)
    styler = styler.format_index(escape="latex", axis="columns")
    column_format = "l" * len(names) + "r" * (len(headers) - len(names))
    return styler.to_latex(column_format=column_format, hrules=True)
