"""`hpmkd report <dirs>`: the seed-aggregated table in the terminal, and files with ``--out``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from hpmkd.errors import UserError
from hpmkd.io import write_text_atomic
from hpmkd.report.collect import collect_failures, collect_results, collect_set_aside
from hpmkd.report.tables import (
    FAILURE_COLUMNS,
    SET_ASIDE_COLUMNS,
    acm_cell,
    cell,
    cost_cells,
    format_failures,
    format_latex,
    format_markdown,
    format_set_aside,
    has_acm,
    has_cost,
    repeats_note,
    summarise,
    with_group_keys,
)


def report(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hpmkd report", description="Summarise finished runs.")
    parser.add_argument("dirs", nargs="+", help="directories searched for results.json (any depth)")
    parser.add_argument(
        "--out", default=None, help="write summary.md, .csv, .tex and PNG figures here"
    )
    parser.add_argument("--title", default=None, help="title of the figures")
    opts = parser.parse_args(args)
    console = Console()
    failures = collect_failures(opts.dirs)
    set_aside = collect_set_aside(opts.dirs)
    try:
        runs = collect_results(opts.dirs)
    except UserError:
        _print_unreported(console, failures, set_aside)  # nothing to table: these are all there is
        raise
    table = summarise(runs)
    console.print(_view(table))
    _print_unreported(console, failures, set_aside)
    if opts.out:
        _write(Path(opts.out), runs, table, format_failures(failures) + format_set_aside(set_aside),
               opts.title)  # fmt: skip
    return 0


def _view(table: pd.DataFrame) -> Table:
    acm = has_acm(table)
    runs = int(table["n"].sum())
    view = Table(
        title=f"hpmkd report: {runs} runs, {len(table)} configurations",
        caption=repeats_note(table) or None,
    )
    cost = has_cost(table)
    columns = ("data", "student", "strategy", "method", "variant", "ratio", "test acc %", "vs CE")
    costs = ["FLOPs", "latency ms"] if cost else []
    for column in (*columns, "n", *costs, *(["ACM choice"] if acm else [])):
        justify = "right" if column in (*columns[5:], "n", *costs) else "left"
        view.add_column(column, justify=justify, overflow="fold" if column == "variant" else None)
    for row in table.itertuples():
        std = "" if row.n < 2 else f" ± {row.test_acc_std:.2f}"
        vs_ce = "" if row.strategy == "plain" or pd.isna(row.vs_ce) else f"{row.vs_ce:+.2f}"
        ratio = "" if pd.isna(row.compression_ratio) else f"{row.compression_ratio:.1f}x"
        cells = [row.data, row.student, row.strategy, row.method, row.variant, ratio,
                 f"{row.test_acc_mean:.2f}{std}", vs_ce, str(row.n)]  # fmt: skip
        cells += cost_cells(row, "")[1:3] if cost else []  # the files have every cost column
        view.add_row(*cells, *([acm_cell(row)] if acm else []))
    return view


def _write(
    out: Path, runs: pd.DataFrame, table: pd.DataFrame, unreported: str, title: str | None
) -> None:
    from hpmkd.report.pareto import plot_tradeoff
    from hpmkd.report.plots import plot_accuracy_bars, plot_accuracy_vs_ratio, plot_curves

    write_text_atomic(out / "summary.md", format_markdown(table) + unreported)
    write_text_atomic(out / "summary.csv", table.to_csv(index=False))
    write_text_atomic(out / "summary.tex", format_latex(table))
    title = title or ", ".join(sorted(set(table["data"])))
    figures = [
        plot_accuracy_bars(table, out / "accuracy.png", title),
        plot_accuracy_vs_ratio(table, out / "accuracy_vs_ratio.png", title),
        plot_curves(with_group_keys(runs), table, out / "curves.png", title),
        plot_tradeoff(table, "student_latency_ms_mean", out / "accuracy_vs_latency.png",
                      "student latency ms (CPU, batch 1, p50; bench=true)", title),
        plot_tradeoff(table, "student_flops", out / "accuracy_vs_flops.png",
                      "student FLOPs per sample", title),
    ]  # fmt: skip
    tables = [out / f"summary.{ext}" for ext in ("md", "csv", "tex")]
    written = [*tables, *(f for f in figures if f)]
    print("wrote " + ", ".join(str(p) for p in written))


def _print_unreported(console: Console, failures: list[dict], set_aside: list[dict]) -> None:
    """The runs no row includes: failed or unfinished, and results set aside (never merged)."""
    sections = (
        (f"failed runs: {len(failures)}", failures, FAILURE_COLUMNS),
        (f"set aside, not merged: {len(set_aside)}", set_aside, SET_ASIDE_COLUMNS),
    )
    for title, records, columns in sections:
        if not records:
            continue
        view = Table(title=title)
        for column in columns:
            view.add_column(column, overflow="fold")
        for record in records:
            view.add_row(*(cell(record, c) for c in columns))
        console.print(view)
