"""Hydra sweepers: `hpmkd train` returns ``optimized_metric`` from results.json, so an Optuna
search (conf/hparams_search/) runs; without the optuna extra, one line names it."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from hydra.errors import MissingConfigException

from hpmkd import cli
from hpmkd.errors import UserError
from tests.conftest import TINY

HAS_OPTUNA = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None


def test_objective_is_the_named_results_value() -> None:
    results = {"acc_best": 91.5, "test_acc": 90}
    assert cli.objective(results, "acc_best") == 91.5
    assert cli.objective(results, "test_acc") == 90.0
    assert isinstance(cli.objective(results, "test_acc"), float)


def test_a_missing_value_is_none_for_plain_runs_and_an_error_for_an_optimising_sweeper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = {"acc_best": None}  # no validation split
    assert cli.objective(results, "acc_best") is None
    monkeypatch.setattr(cli, "_optimising_sweeper", lambda: True)
    with pytest.raises(UserError, match="optimized_metric 'acc_best' has no value"):
        cli.objective(results, "acc_best")


def test_an_unknown_optimized_metric_is_refused_before_training(run_cli) -> None:
    run = run_cli("train", "optimized_metric=val_acc", *TINY)
    assert run.code == 2
    assert run.err.startswith("hpmkd: error: unknown optimized_metric 'val_acc'; valid: acc_best")
    assert run.results() == []


def test_the_optuna_sweeper_without_its_extra_names_the_extra() -> None:
    err = MissingConfigException("missing", "hydra/sweeper/optuna", options=["basic"])
    message = cli._hydra_error_message(err)
    assert message.startswith("hydra/sweeper=optuna needs hpmkd's optional extra 'optuna'")
    assert 'pip install "hpmkd[optuna]"' in message and "uv sync --extra optuna" in message


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPTUNA, reason="the optuna extra is not installed")
def test_two_trial_optuna_search_over_the_kd_temperature(run_cli, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    run = run_cli(
        "train", "+strategy=kd", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}", *TINY,
    )  # fmt: skip
    assert run.code == 0, run.err
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(trials) == 2
    temperatures = [t["config"]["method"]["temperature"] for t in trials]
    assert len(set(temperatures)) == 2 and all(1.0 <= t <= 8.0 for t in temperatures)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t["acc_best"] for t in trials))
    assert 1.0 <= best["best_params"]["method.temperature"] <= 8.0
