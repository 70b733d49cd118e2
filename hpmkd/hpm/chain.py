"""The Progressive Distillation Chain's plan and its table (METHODS.md 2.2).

Teacher -> M1 -> ... -> student. The next intermediate's parameter budget is the geometric mean
of the previous model's and the student's parameter counts; its architecture is the member of the
student's family closest to that budget (``hpmkd.models.family``), strictly smaller than the
previous model and strictly larger than the student. The greedy construction (train a candidate,
distil the student through it, keep it only if the student gains at least epsilon points of
validation accuracy) lives in ``hpmkd.strategies.progressive``; this module holds the arithmetic
and the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from hpmkd.io import write_text_atomic
from hpmkd.models.family import Member, closest_member


def next_budget(previous_params: int, student_params: int) -> float:
    """The geometric-mean rule: sqrt(previous * student) parameters."""
    return math.sqrt(previous_params * student_params)


def next_member(
    members: Sequence[Member], previous_params: int, student_params: int
) -> Member | None:
    """The family member closest to the next budget, strictly between student and previous."""
    budget = next_budget(previous_params, student_params)
    return closest_member(members, budget, above=student_params, below=previous_params)


@dataclass
class ChainRow:
    """One line of the chain table: a model of the chain, or a candidate that was dropped."""

    role: str  # teacher | link<k> | student
    arch: str
    params: int
    ratio: float  # teacher parameters / these parameters
    acc: float | None  # the model's own test accuracy (%)
    student_val: float | None  # validation accuracy (%) of the student distilled through it
    kept: bool
    note: str = ""


def chain_table(rows: Sequence[ChainRow], title: str, epsilon: float) -> Table:
    caption = (
        f"a link is kept when the student distilled through it gains >= {epsilon:g} pp of "
        "validation accuracy over the best student so far (note: the gain)"
    )
    table = Table(title=title, caption=caption)
    for column in ("role", "model", "params", "ratio", "acc %", "student val %", "kept", "note"):
        table.add_column(column, justify="left" if column in ("role", "model", "note") else "right")
    for row in rows:
        table.add_row(
            row.role, row.arch, f"{row.params:,}", f"{row.ratio:.1f}x", _pct(row.acc),
            _pct(row.student_val), "yes" if row.kept else "no", row.note,
        )  # fmt: skip
    return table


def chain_markdown(rows: Sequence[ChainRow]) -> str:
    lines = [
        "| role | model | params | compression | test acc % | student val % | kept | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.role} | {row.arch} | {row.params:,} | {row.ratio:.1f}x | {_pct(row.acc)} | "
            f"{_pct(row.student_val)} | {'yes' if row.kept else 'no'} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def save_chain(rows: Sequence[ChainRow], out_dir: Path) -> Path:
    path = out_dir / "chain.md"
    write_text_atomic(path, chain_markdown(rows))
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
