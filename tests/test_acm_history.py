"""Which run history ACM reads (strategy.acm.history: auto | live | frozen | <path>), the sweep's
snapshot, and what a run records of ACM's choice."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from hpmkd import config
from hpmkd.errors import UserError
from hpmkd.hpm.acm import META_FEATURES, candidate_grid
from hpmkd.hpm.history import HISTORY_FILE, append_run, read_history
from hpmkd.hpm.record import consult_acm, has_chain
from hpmkd.hpm.source import SNAPSHOT_FILE, history_source, prepare_history
from tests.conftest import SHARED_DATA, TINY, toy_splits


@pytest.fixture(autouse=True)
def no_hydra_config():
    """HydraConfig is process-wide: each test starts and ends outside any run."""
    HydraConfig.instance().cfg = None
    yield
    HydraConfig.instance().cfg = None


def _cfg(store: Path, *overrides: str, sweep: Path | None = None) -> DictConfig:
    """A run's config; with ``sweep`` as a member of a multirun in that sweep dir (the Hydra
    config set as Hydra's run_job sets it, in any launcher)."""
    config.setup()
    GlobalHydra.instance().clear()
    multirun = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}"] if sweep else []
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["+strategy=hpmkd", f"store.root={store}", *multirun, *overrides],
            return_hydra_config=True,
        )
    if sweep:
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _row(rng: random.Random) -> dict:
    config = rng.choice(candidate_grid(1e-3, 30)).as_dict()
    phi = {k: rng.uniform(1.0, 100.0) for k in META_FEATURES}
    return {"phi": phi, "config": config, "chain": True, "result": {"retention": rng.random()}}


def _store_with_history(root: Path, n: int = 30) -> Path:
    rng = random.Random(3)
    for _ in range(n):
        append_run(root, _row(rng))
    return root


def _choice(cfg: DictConfig):
    return consult_acm(
        cfg, toy_splits(), source=history_source(cfg), chain=has_chain(cfg.strategy),
        teacher_params=5000, teacher_acc=90.0, student_params=100,
    )  # fmt: skip


def test_members_of_a_frozen_sweep_read_the_snapshot_even_after_a_row_was_appended(tmp_path):
    store, sweep = _store_with_history(tmp_path / "store"), tmp_path / "sweep"
    first = _cfg(store, "seed=0", sweep=sweep)
    prepare_history(first)  # the first member starts: the snapshot is taken
    source = history_source(first)
    assert source.mode == "frozen" and source.path == sweep.absolute() / SNAPSHOT_FILE
    chosen_first = _choice(first)
    append_run(store, _row(random.Random(99)))  # the first member finished
    second = _cfg(store, "seed=1", sweep=sweep)
    prepare_history(second)  # the snapshot exists: not taken again
    assert len(read_history(store)) == 31
    assert len(history_source(second).rows()) == 30
    chosen_second = _choice(second)
    assert chosen_second.n_history == chosen_first.n_history == 30
    assert chosen_second.config == chosen_first.config
    # a later sweep in another directory sees the new row
    later = _cfg(store, sweep=tmp_path / "later")
    prepare_history(later)
    assert len(history_source(later).rows()) == 31


def test_every_member_takes_the_snapshot_whatever_its_strategy(tmp_path):
    """A KD member (no ACM) that starts first must still freeze the history before it appends."""
    store, sweep = _store_with_history(tmp_path / "store", 3), tmp_path / "sweep"
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        kd = compose(
            "train",
            overrides=["+strategy=kd", f"store.root={store}", "hydra.mode=MULTIRUN",
                       f"hydra.sweep.dir={sweep}"],
            return_hydra_config=True,
        )  # fmt: skip
    HydraConfig.instance().set_config(kd)
    prepare_history(kd)
    assert len((sweep / SNAPSHOT_FILE).read_text().splitlines()) == 3


def test_a_store_without_history_gives_an_empty_snapshot(tmp_path):
    cfg = _cfg(tmp_path / "empty_store", sweep=tmp_path / "sweep")
    prepare_history(cfg)
    append_run(tmp_path / "empty_store", _row(random.Random(1)))
    assert history_source(cfg).rows() == []


def test_live_and_auto_outside_a_multirun_read_the_store_as_it_is(tmp_path):
    store = _store_with_history(tmp_path / "store", 3)
    single = _cfg(store)
    prepare_history(single)
    sources = [history_source(single)]
    live_member = _cfg(store, "strategy.acm.history=live", sweep=tmp_path / "sweep")
    prepare_history(live_member)
    sources.append(history_source(live_member))
    append_run(store, _row(random.Random(1)))
    for source in sources:
        assert source.mode == "live" and len(source.rows()) == 4


def test_frozen_outside_a_multirun_is_a_user_error(tmp_path):
    cfg = _cfg(tmp_path / "store", "strategy.acm.history=frozen")
    with pytest.raises(UserError, match="needs a multirun"):
        prepare_history(cfg)


def test_a_path_is_read_and_never_written(tmp_path):
    given = tmp_path / "given" / "rows.jsonl"
    _store_with_history(given.parent, 7)
    (given.parent / HISTORY_FILE).rename(given)
    (given.parent / (HISTORY_FILE + ".lock")).unlink()
    before = given.read_bytes()
    store = _store_with_history(tmp_path / "store", 3)
    for sweep in (None, tmp_path / "sweep"):
        cfg = _cfg(store, f"strategy.acm.history={given}", sweep=sweep)
        prepare_history(cfg)
        source = history_source(cfg)
        assert source.mode == "file" and source.path == given
        assert _choice(cfg).n_history == 7
    assert given.read_bytes() == before
    assert sorted(p.name for p in given.parent.iterdir()) == ["rows.jsonl"]  # no lock beside it


def test_a_missing_path_is_a_user_error(tmp_path):
    cfg = _cfg(tmp_path / "store", f"strategy.acm.history={tmp_path / 'nope.jsonl'}")
    with pytest.raises(UserError, match="no such file"):
        prepare_history(cfg)


def test_the_choice_does_not_depend_on_the_run_seed(tmp_path):
    """With this history, forests seeded 0..4 choose differently: the run seed must not be the
    forest's seed."""
    store = _store_with_history(tmp_path / "store")
    choices = {_choice(_cfg(store, f"seed={seed}")).config for seed in range(5)}
    assert len(choices) == 1


def test_som_off_reads_the_private_stores_empty_history(tmp_path):
    store = _store_with_history(tmp_path / "store")
    cfg = _cfg(store)
    source = history_source(cfg, private_store=tmp_path / "private")
    assert source.mode == "private" and source.rows() == []


@pytest.mark.slow
def test_a_real_sweep_reads_one_snapshot_and_records_the_choice(run_cli, tmp_path):
    """Two hpmkd members through Hydra's basic launcher: the second starts after the first
    appended its row, and both choose from the same 5 rows; results.json says so."""
    store = tmp_path / "store"
    rng = random.Random(5)
    for _ in range(5):
        append_run(store, _row(rng))
    sweep = tmp_path / "sweep"
    run = run_cli(
        "train", "-m", *TINY, "recipe.epochs=1", f"store.root={store}", "+strategy=hpmkd",
        "strategy.components.pdc=false", f"hydra.sweep.dir={sweep}", "seed=0,1",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert len(read_history(store)) == 7  # each member added its row
    for member in ("0", "1"):
        acm = json.loads((sweep / member / "results.json").read_text())["details"]["acm"]
        assert acm["history"] == {"mode": "frozen", "path": str(sweep / SNAPSHOT_FILE)}
        assert acm["source"] == "history" and acm["n_history"] == 5
        assert acm["epsilon_source"] == "no chain" and acm["predicted_retention"] is not None


def test_hpmkd_acm_on_embedded_data_with_an_empty_store(run_cli, tmp_path):
    run = run_cli("acm", "data=digits", f"store.root={tmp_path / 'empty'}")
    assert run.code == 0, run.err
    assert "cold_start" in run.out and "live" in run.out


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")
def test_hpmkd_acm_on_shared_data(run_cli, tmp_path):
    """letter's path goes through ${hydra:runtime.cwd}, which needs a Hydra config."""
    run = run_cli("acm", "data=letter", f"store.root={tmp_path / 'empty'}")
    assert run.code == 0, run.err
    assert "compression_ratio" in run.out


def test_hpmkd_acm_user_errors_are_one_line(run_cli, tmp_path):
    for bad in ("data=nope", "strategy.acm.min_history=x", "strategy.acm.history=frozen"):
        run = run_cli("acm", bad, f"store.root={tmp_path / 'empty'}")
        assert run.code == 2 and run.err.startswith("hpmkd: error: ")
        assert len(run.err.strip().splitlines()) == 1, run.err


def test_hpmkd_acm_sizes_the_student_by_target_ratio_as_a_run_would(run_cli, tmp_path):
    run = run_cli("acm", "student.target_ratio=10", f"store.root={tmp_path / 'empty'}")
    assert run.code == 0, run.err
    ratio = re.search(r"compression_ratio\s*│\s*([\d.]+)", run.out)
    assert ratio and 8 < float(ratio.group(1)) < 12.5
