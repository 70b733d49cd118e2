"""HPM-KD end to end through `hpmkd`, on the embedded digits data with tiny settings."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store for the module: the digits teacher is trained once and reused."""
    return tmp_path_factory.mktemp("store")


def _train(run_cli, store, *overrides):
    run = run_cli("train", *TINY, "recipe.epochs=2", f"store.root={store}", *overrides)
    assert run.code == 0, run.err
    return run


def test_progressive_needs_no_argument_and_prints_and_saves_its_chain(run_cli, shared_store):
    run = _train(run_cli, shared_store, "+strategy=progressive")
    (results,) = run.results()
    assert "progressive distillation chain" in run.out and "link1" in run.out
    rows = results["details"]["chain"]
    assert [r["role"] for r in rows[:2]] == ["teacher", "student (direct)"]
    assert rows[2]["role"] == "link1"
    params = [r["params"] for r in rows if r["role"].startswith("link")]
    teacher, student = rows[0]["params"], results["student"]["params"]
    assert all(student < p < teacher for p in params) and params == sorted(params, reverse=True)
    kept = [r for r in rows if r["role"].startswith("link") and r["kept"]]
    assert [m["params"] for m in results["intermediates"]] == [r["params"] for r in kept]
    chain_md = next(run.outputs.rglob("chain.md")).read_text()
    assert "| link1 |" in chain_md
    # the student reported is the best candidate by validation accuracy
    best = max(r["student_val"] for r in rows if r["student_val"] is not None)
    assert results["acc_best"] == pytest.approx(best)


def test_hpmkd_runs_all_components_and_logs_weights_and_temperature(run_cli, shared_store):
    run = _train(run_cli, shared_store, "+strategy=hpmkd", "strategy.max_length=1")
    (results,) = run.results()
    details = results["details"]
    assert details["components"] == dict.fromkeys(("acm", "pdc", "awmt", "mts", "ppp", "som"), True)
    assert details["acm"]["source"] == "cold_start"
    assert "ACM configuration" in run.out and "HPM-KD chain" in run.out
    curves = results["curves"]
    assert len(curves["temperature"]) == 2 and curves["temperature"][0] == 4.0
    assert "teacher_weight_0" in curves and "attention_entropy" in curves
    history = (shared_store / "history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["strategy"] == "hpmkd"


def test_hpmkd_with_every_component_off_is_direct_uniform_kd(run_cli, shared_store, tmp_path):
    off = [f"strategy.components.{c}=false" for c in ("acm", "pdc", "awmt", "mts", "ppp", "som")]
    history = shared_store / "history.jsonl"
    rows_before = len(history.read_text().splitlines())  # the run above left its row
    assert rows_before >= 1
    artifacts_before = len(list(shared_store.glob("objects/*/*")))
    run = _train(run_cli, shared_store, "+strategy=hpmkd", *off)
    (results,) = run.results()
    assert [r["role"] for r in results["details"]["chain"]] == ["teacher", "student (direct)"]
    assert results["details"]["acm"] is None and results["intermediates"] == []
    assert set(results["curves"]["temperature"]) == {4.0}  # no MTS
    assert "attention_entropy" in results["curves"] and results["student"]["extra_params"] == 0
    # SOM off: a private store (the teacher is trained again there) and no history row
    assert results["teacher"]["extra"]["source"] == "trained"
    assert len(history.read_text().splitlines()) == rows_before
    assert len(list(shared_store.glob("objects/*/*"))) == artifacts_before  # nothing stored


def test_multi_teacher_with_uniform_weights(run_cli, shared_store):
    run = _train(
        run_cli, shared_store, "+strategy=multi_teacher", "teachers=[mlp_large,mlp]",
        "method.weighting=uniform",
    )  # fmt: skip
    (results,) = run.results()
    assert results["teacher"]["arch"] == "ensemble(mlp_large,mlp)"
    assert [t["arch"] for t in results["details"]["teachers"]] == ["mlp_large", "mlp"]
    assert results["curves"]["teacher_weight_0"] == [0.5, 0.5]


def test_temperature_schedule_works_with_plain_kd(run_cli, shared_store):
    run = _train(run_cli, shared_store, "+strategy=kd", "temperature=linear", "recipe.epochs=3")
    (results,) = run.results()
    assert results["curves"]["temperature"] == pytest.approx([4.0, 3.0, 2.0])


def test_target_ratio_picks_the_student(run_cli, shared_store):
    run = _train(run_cli, shared_store, "+strategy=kd", "student.target_ratio=10")
    (results,) = run.results()
    assert 8 < results["compression_ratio"] < 12.5
    assert results["config"]["student"]["params"]["hidden"] != [64, 32]


def test_acm_command_shows_features_choice_and_history(run_cli, shared_store):
    """Runs above left 5 history rows (every KD-like run with SOM on): enough to fit."""
    run = run_cli("acm", f"store.root={shared_store}")
    assert run.code == 0, run.err
    assert "compression_ratio" in run.out and "digits" in run.out
    assert "5 relevant runs in the history: random-forest argmax" in " ".join(run.out.split())
    cold = run_cli("acm", f"store.root={shared_store}", "strategy.acm.min_history=6")
    assert "fewer than 6: documented defaults" in " ".join(cold.out.split())


def test_a_temperature_schedule_is_part_of_a_stored_models_identity(run_cli, shared_store):
    """The chain's models are reused from the store only when everything that shaped them is
    the same: the same chain under a temperature schedule is trained anew, then reused."""
    args = ("+strategy=progressive", "strategy.max_length=1", "temperature=linear")
    first = _train(run_cli, shared_store, *args)
    assert "student_direct mlp_small: not in the store" in first.err + first.out
    again = _train(run_cli, shared_store, *args)
    assert "student_direct mlp_small: reused from the store" in again.err + again.out
