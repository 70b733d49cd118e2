import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import random
import re

import pytest
import torch
from rich.console import Console

from hpmkd.errors import UserError
from hpmkd.hpm.acm import (
    CONFIG_KEYS,
    META_FEATURES,
    ACMConfig,
    candidate_grid,
    choose_config,
    default_config,
    meta_features,
    print_report,
    relevant_rows,
)
from hpmkd.hpm.history import HISTORY_FILE, append_run, read_history

BASE = {"base_lr": 0.1, "base_epochs": 10}


def _phi(rng: random.Random) -> dict[str, float]:
    return {k: rng.uniform(1.0, 100.0) for k in META_FEATURES}


def _row(phi, config, retention, **extra):
    return {"phi": phi, "config": config, "result": {"retention": retention}, **extra}


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    grid = candidate_grid(**BASE)
    return [_row(_phi(rng), rng.choice(grid).as_dict(), rng.random()) for _ in range(n)]


def _planted(seed: int) -> tuple[list[dict], list[dict]]:
    """60 runs, 4 settings x the T0-alpha grid; retention peaks at T0 3, alpha 0.7."""
    rng = random.Random(seed)
    settings = [_phi(rng) for _ in range(4)]
    rows = []
    for phi, t0, alpha in itertools.product(settings, (2, 3, 4, 5, 6), (0.5, 0.7, 0.9)):
        config = {
            "T0": t0,
            "alpha": alpha,
            "lr": 0.1 * rng.choice((0.5, 1, 2)),
            "epochs": 10,
            "epsilon": rng.choice((0.25, 0.5, 1.0)),
        }
        retention = 0.9 - 0.05 * abs(t0 - 3) - 0.1 * abs(alpha - 0.7) + rng.gauss(0, 0.003)
        rows.append(_row(phi, config, retention))
    return rows, settings


# --- meta-features ------------------------------------------------------------------------------


def test_meta_features_on_a_hand_built_example():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    phi = meta_features(
        n_train=8,
        n_classes=3,
        input_dim=3 * 4 * 4,
        params_teacher=1000,
        params_student=100,
        labels=labels,
        teacher_acc=None,
    )
    assert tuple(phi) == META_FEATURES
    assert all(isinstance(v, float) and math.isfinite(v) for v in phi.values())
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, normalised by ln 3
    assert phi["label_entropy"] == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert phi["class_imbalance"] == pytest.approx(2.0)
    assert phi["compression_ratio"] == pytest.approx(10.0)
    assert phi["input_dim"] == 48.0 and phi["n_classes"] == 3.0
    assert phi["teacher_acc"] == -1.0


def test_meta_features_balanced_missing_class_and_nan_teacher():
    common = {"n_train": 6, "input_dim": 5, "params_teacher": 10, "params_student": 5}
    balanced = meta_features(
        n_classes=3, labels=torch.tensor([0, 1, 2, 2, 1, 0]), teacher_acc=91.5, **common
    )
    assert balanced["label_entropy"] == pytest.approx(1.0)
    assert balanced["class_imbalance"] == pytest.approx(1.0)
    assert balanced["teacher_acc"] == 91.5
    missing = meta_features(
        n_classes=4, labels=torch.tensor([0, 1, 2, 2, 1, 0]), teacher_acc=float("nan"), **common
    )
    assert missing["class_imbalance"] == pytest.approx(2.0)  # the absent class counts as 1
    assert missing["label_entropy"] == pytest.approx(math.log(3) / math.log(4))
    assert missing["teacher_acc"] == -1.0
    with pytest.raises(ValueError, match="labels"):
        meta_features(n_classes=2, labels=torch.tensor([0, 2]), teacher_acc=None, **common)


# --- history ------------------------------------------------------------------------------------


def test_history_round_trip_and_missing_file(tmp_path):
    assert read_history(tmp_path / "absent") == []
    rows = _rows(3)
    for row in rows:
        append_run(tmp_path, row)
    assert read_history(tmp_path) == rows
    assert len((tmp_path / HISTORY_FILE).read_text().splitlines()) == 3


def test_history_refuses_nan_before_writing(tmp_path):
    with pytest.raises(ValueError):
        append_run(tmp_path, {"result": {"retention": float("nan")}})
    assert read_history(tmp_path) == []


def test_torn_last_line_is_skipped_logged_once_and_does_not_eat_the_next_row(tmp_path, caplog):
    first, second = _rows(2)
    append_run(tmp_path, first)
    with open(tmp_path / HISTORY_FILE, "a") as f:
        f.write(json.dumps(second)[:25])  # a crash mid-write: no closing brace, no newline
    with caplog.at_level(logging.WARNING, logger="hpmkd"):
        assert read_history(tmp_path) == [first]
    assert len([r for r in caplog.records if "skipped 1 unreadable" in r.getMessage()]) == 1
    append_run(tmp_path, second)
    assert read_history(tmp_path) == [first, second]


def _appender(root: str, writer: int, n: int) -> None:
    for i in range(n):
        append_run(root, {"writer": writer, "i": i, "pad": "x" * 10_000})


@pytest.mark.slow  # each spawned child imports this module, torch included
def test_two_processes_appending_concurrently_keep_every_row(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(tmp_path), w, 50)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is whole, valid JSON
    assert len(rows) == 100
    assert sorted((r["writer"], r["i"]) for r in rows) == [
        (w, i) for w in (0, 1) for i in range(50)
    ]


# --- candidates and defaults --------------------------------------------------------------------


def test_default_config_and_grid():
    assert default_config(0.05, 240) == ACMConfig(
        T0=4.0, alpha=0.9, lr=0.05, epochs=240, epsilon=0.5
    )
    assert tuple(default_config(0.05, 240).as_dict()) == CONFIG_KEYS
    grid = candidate_grid(0.1, 30)
    assert len(grid) == 5 * 3 * 3 * 1 * 3
    assert {c.T0 for c in grid} == {2.0, 3.0, 4.0, 5.0, 6.0}
    assert sorted({c.lr for c in grid}) == pytest.approx([0.05, 0.1, 0.2])
    assert {c.epochs for c in grid} == {30}
    assert {c.epsilon for c in grid} == {0.25, 0.5, 1.0}


def test_space_overrides_an_axis():
    grid = candidate_grid(0.1, 30, {"T0": [4], "lr": [1], "epochs": [20, 40]})
    assert len(grid) == 1 * 3 * 1 * 2 * 3
    assert {c.T0 for c in grid} == {4.0} and {c.lr for c in grid} == {0.1}
    assert {c.epochs for c in grid} == {20, 40}
    with pytest.raises(UserError, match="gamma"):
        candidate_grid(0.1, 30, {"gamma": [1]})
    with pytest.raises(UserError, match="no values"):
        candidate_grid(0.1, 30, {"alpha": []})
    with pytest.raises(UserError, match="gamma"):
        choose_config(_phi(random.Random(1)), [], space={"gamma": [1]}, **BASE)
    rows, settings = _planted(0)
    chosen = choose_config(settings[0], rows, space={"T0": [5, 6]}, **BASE)
    assert (chosen.config.T0, chosen.config.alpha) == (5.0, 0.7)


# --- choose_config ------------------------------------------------------------------------------


def test_empty_history_is_a_cold_start():
    phi = _phi(random.Random(1))
    prediction = choose_config(phi, [], **BASE)
    assert prediction.source == "cold_start"
    assert prediction.config == default_config(0.1, 10)
    assert prediction.predicted is None and prediction.importances == {}
    assert prediction.n_history == 0 and "0 relevant runs" in prediction.reason


def test_four_rows_are_a_cold_start_five_are_fitted():
    phi = _phi(random.Random(1))
    four = choose_config(phi, _rows(4), **BASE)
    assert four.source == "cold_start" and "4 relevant runs" in four.reason
    five = choose_config(phi, _rows(5), **BASE)
    assert five.source == "history" and five.n_history == 5
    assert five.predicted is not None
    assert set(five.importances) == set(META_FEATURES + CONFIG_KEYS)
    # T0, alpha, lr, epochs and phi from one forest; epsilon's from the forest of chain rows
    first = [v for k, v in five.importances.items() if k != "epsilon"]
    assert sum(first) == pytest.approx(1.0) and 0 <= five.importances["epsilon"] <= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_history_recovers_the_best_t0_and_alpha(seed):
    rows, settings = _planted(seed)
    unseen = _phi(random.Random(100 + seed))
    for phi in (settings[0], unseen):
        prediction = choose_config(phi, rows, seed=seed, **BASE)
        assert prediction.source == "history" and prediction.n_history == 60
        assert (prediction.config.T0, prediction.config.alpha) == (3.0, 0.7)
        assert prediction.predicted == pytest.approx(0.9, abs=0.02)


def test_same_seed_same_prediction():
    rows = _rows(30, seed=3)
    phi = _phi(random.Random(4))
    assert choose_config(phi, rows, seed=7, **BASE) == choose_config(phi, rows, seed=7, **BASE)


def test_rows_missing_keys_are_not_relevant():
    full = _rows(4)
    no_epsilon = _rows(1, seed=1)[0]
    del no_epsilon["config"]["epsilon"]
    no_feature = _rows(1, seed=2)[0]
    del no_feature["phi"]["teacher_acc"]
    no_target = _rows(1, seed=3)[0] | {"result": {"student_acc": 70.0}}
    null_target = _rows(1, seed=4)[0] | {"result": {"retention": None}}
    no_phi = {"config": default_config(0.1, 10).as_dict(), "result": {"retention": 0.8}}
    history = full + [no_epsilon, no_feature, no_target, null_target, no_phi]
    # a row without epsilon (a run without a chain) still teaches T0, alpha, lr and epochs
    assert relevant_rows(history) == full + [no_epsilon]
    prediction = choose_config(_phi(random.Random(1)), history, **BASE)
    assert prediction.source == "history" and prediction.n_history == 5
    assert prediction.n_chain_history == 4 and prediction.epsilon_source == "default"
    assert prediction.config.epsilon == 0.5
    assert (
        choose_config(_phi(random.Random(1)), history, target="student_acc", **BASE).n_history == 1
    )


def test_phi_must_have_every_meta_feature():
    phi = _phi(random.Random(1))
    del phi["n_train"]
    with pytest.raises(ValueError, match="n_train"):
        choose_config(phi, [], **BASE)


# --- report -------------------------------------------------------------------------------------


def _report(phi, prediction, rows) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    print_report(console, phi, prediction, rows)
    return console.export_text()


def test_print_report_names_the_choice_its_source_and_recent_rows():
    rows, settings = _planted(0)
    for i, row in enumerate(rows):
        row |= {"data": f"set{i}", "strategy": "hpmkd"}
    prediction = choose_config(settings[0], rows, **BASE)
    text = _report(settings[0], prediction, rows)
    assert "history" in text and "T0" in text and re.search(r"│ T0\s+│\s+3 │", text)
    assert "set59" in text and "set40" in text and "set39" not in text  # the last 20 rows only
    assert "the last 20 of 60 rows" in text


def test_print_report_on_a_cold_start():
    phi = _phi(random.Random(1))
    prediction = choose_config(phi, [], **BASE)
    text = _report(phi, prediction, [])
    assert "cold_start" in text and "0 relevant runs" in text
    assert re.search(r"│ T0\s+│\s+4 │", text) and "run history: empty" in text


def test_a_history_without_configuration_variety_keeps_the_defaults():
    """Rows that all used one configuration teach the forest nothing about the knobs: every
    candidate scores the same, and the choice must be the defaults, not a corner of the grid."""
    rows = [
        {
            "phi": {k: float(i + 1) for k in META_FEATURES},
            "config": {"T0": 4.0, "alpha": 0.9, "lr": 1e-3, "epochs": 30, "epsilon": 0.5},
            "result": {"retention": 0.8 + 0.01 * i},
        }
        for i in range(8)
    ]
    phi = {k: 3.0 for k in META_FEATURES}
    prediction = choose_config(phi, rows, base_lr=1e-3, base_epochs=30)
    assert prediction.source == "history"
    assert prediction.config == default_config(1e-3, 30)


# --- epsilon only from runs with a chain ----------------------------------------------------------


def _epsilon_history(seed: int = 0) -> tuple[list[dict], dict]:
    """Chain rows where epsilon 1.0 is clearly best, and many KD rows (no epsilon) that did best
    at T0 3: the KD rows must shape T0 but never epsilon."""
    rng = random.Random(seed)
    phi = _phi(rng)
    rows = []
    for t0, alpha in itertools.product((2, 3, 4, 5, 6), (0.5, 0.7, 0.9)):
        config = {"T0": t0, "alpha": alpha, "lr": 0.1, "epochs": 10}
        rows.append(_row(phi, config, 0.9 - 0.05 * abs(t0 - 3), chain=False))
    for epsilon in (0.25, 0.5, 1.0, 0.25, 0.5, 1.0):
        config = {"T0": 4, "alpha": 0.9, "lr": 0.1, "epochs": 10, "epsilon": epsilon}
        rows.append(_row(phi, config, 0.7 + 0.1 * (epsilon == 1.0), chain=True))
    return rows, phi


def test_epsilon_is_learned_from_chain_rows_only_and_the_rest_from_every_row():
    rows, phi = _epsilon_history()
    chained = choose_config(phi, rows, **BASE)
    assert chained.n_history == 21 and chained.n_chain_history == 6
    assert chained.config.T0 == 3.0 and chained.config.epsilon == 1.0
    assert chained.epsilon_source == "history" and "6 of them with a chain" in chained.reason
    unchained = choose_config(phi, rows, chain=False, **BASE)
    assert unchained.config.T0 == 3.0 and unchained.epsilon_source == "no chain"
    assert unchained.config.epsilon == 0.5  # the default, unused by a run without a chain
    few = choose_config(phi, rows[:-2], **BASE)
    assert few.n_chain_history == 4 and few.epsilon_source == "default"
    assert few.config.epsilon == 0.5


def test_an_old_row_of_a_run_without_a_chain_has_no_epsilon():
    """Rows written before epsilon was kept for chains only carry the default 0.5 with
    ``chain: false``: that value was never used and must not teach epsilon."""
    rows, phi = _epsilon_history()
    old = [r | {"config": r["config"] | {"epsilon": 0.5}} for r in rows if r["chain"] is False]
    chain_rows = [r for r in rows if r["chain"] is True]
    prediction = choose_config(phi, old + chain_rows, **BASE)
    assert prediction.n_history == 21 and prediction.n_chain_history == 6
    assert prediction.config.epsilon == 1.0
