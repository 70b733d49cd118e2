"""A run's key: what the run is, not where it writes or what a sweeper reads of it."""

from __future__ import annotations

from pathlib import Path

from hpmkd.train import run_key
from tests.conftest import TINY
from tests.test_configs import _compose


def _key(*overrides: str) -> str:
    return run_key(_compose("paths.output_dir=/tmp/run", "paths.shared_data=/tmp/data", *overrides))


def test_the_optimized_metric_is_not_part_of_the_run_key():
    assert _key("optimized_metric=acc_last") == _key()
    assert _key("seed=1") != _key()


def test_a_finished_run_read_by_another_metric_is_complete_already(run_cli, tmp_path: Path):
    run_dir = tmp_path / "run"
    first = run_cli("train", *TINY, f"hydra.run.dir={run_dir}")
    assert first.code == 0, first.err
    results = run_dir / "results.json"
    mtime = results.stat().st_mtime_ns
    again = run_cli("train", *TINY, f"hydra.run.dir={run_dir}", "optimized_metric=test_acc")
    assert again.code == 0, again.err
    assert "complete already" in again.err + again.out
    assert results.stat().st_mtime_ns == mtime
