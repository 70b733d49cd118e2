"""Shared fixtures: an isolated cache/output tree and an in-process `hpmkd` runner."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hpmkd.data.splits import DataSplits
from hpmkd.engine import perf

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tiny settings for end-to-end runs: seconds, not minutes. Numbers are never compared with papers.
TINY = ["recipe=smoke", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]


@dataclass
class CliRun:
    code: int
    out: str
    err: str
    outputs: Path

    def results(self) -> list[dict]:
        found = sorted(self.outputs.rglob("results.json"), key=os.path.getmtime)
        return [json.loads(p.read_text()) for p in found]


def toy_splits() -> DataSplits:
    """Three classes of 4-feature rows: enough for meta-features and history rows."""
    x = torch.randn(10, 4)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    return DataSplits(
        name="toy", x_train=x, y_train=y, x_val=x[:2], y_val=y[:2], x_test=x[:2], y_test=y[:2],
        num_classes=3, class_names=["a", "b", "c"], input_shape=(4,), is_image=False,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def fp32_on_every_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``precision=auto`` resolves as on a CPU without AMX, so a test's numbers do not depend on
    the machine; tests of the bf16 path switch it on themselves."""
    monkeypatch.setattr(perf, "cpu_bf16", lambda: False)


@pytest.fixture
def hpmkd_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HPMKD_CACHE (store, data) and HPMKD_OUTPUTS (run dirs) inside tmp_path."""
    monkeypatch.setenv("HPMKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HPMKD_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path


@pytest.fixture
def run_cli(hpmkd_env: Path, capsys: pytest.CaptureFixture) -> Callable[..., CliRun]:
    """Run `hpmkd <args>` in this process; returns exit code, output and the outputs dir."""
    from hpmkd.cli import main

    def run(*args: str) -> CliRun:
        try:
            main(list(args))
            code = 0
        except SystemExit as stop:
            code = int(stop.code or 0)
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err, hpmkd_env / "outputs")

    return run
