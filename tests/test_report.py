import csv
import json
import os
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from hpmkd.report import collect_results, summarise
from hpmkd.report.tables import format_latex, format_markdown
from hpmkd.results import SCHEMA_VERSION


def _write(
    root, name, *, strategy, method, seed, test_acc, teacher=None, teacher_acc=90.0,
    extra_params=0, wall_time_s=1.0, student_params=100,
):  # fmt: skip
    results = {
        "status": "completed",
        "schema": SCHEMA_VERSION,
        "strategy": strategy,
        "method": method,
        "seed": seed,
        "data": {"name": "toy"},
        "epochs": 5,
        "config": {"recipe": {"name": "smoke"}, "student": {"size": student_params}},
        "student": {"arch": "mlp_small", "params": student_params, "extra_params": extra_params},
        "teacher": {"arch": teacher, "params": 1000} if teacher else None,
        "test_acc": test_acc,
        "test_acc_last": test_acc - 0.5,
        "acc_best": test_acc + 1,
        "acc_last": test_acc,
        "teacher_acc": teacher_acc if teacher else None,
        "retention": test_acc / teacher_acc if teacher else None,
        "compression_ratio": 1000 / student_params if teacher else None,
        "wall_time_s": wall_time_s,
    }
    path = root / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


def test_groups_over_seeds_with_mean_std_n_and_gap_to_ce(tmp_path):
    ce, kd = [80.0, 82.0, 84.5], [83.0, 85.5]
    for seed, acc in enumerate(ce):
        _write(tmp_path, f"ce{seed}", strategy="plain", method="ce", seed=seed, test_acc=acc)
    for seed, acc in enumerate(kd):
        _write(
            tmp_path,
            f"kd{seed}",
            strategy="kd",
            method="kd",
            seed=seed,
            test_acc=acc,
            teacher="big",
        )
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "results.json").write_text(json.dumps({"status": "failed"}))

    table = summarise(collect_results([tmp_path])).set_index("method")
    assert table.loc["ce", "n"] == 3 and table.loc["kd", "n"] == 2
    assert table.loc["ce", "test_acc_mean"] == pytest.approx(sum(ce) / 3)
    assert table.loc["ce", "test_acc_std"] == pytest.approx(statistics.stdev(ce))
    assert table.loc["kd", "test_acc_std"] == pytest.approx(statistics.stdev(kd))
    assert table.loc["kd", "vs_ce"] == pytest.approx(sum(kd) / 2 - sum(ce) / 3)
    markdown = format_markdown(table.reset_index())
    assert f"{sum(kd) / 2:.2f} ± {statistics.stdev(kd):.2f}" in markdown


def test_no_results_is_a_user_error(tmp_path):
    from hpmkd.errors import UserError

    with pytest.raises(UserError, match="no completed results.json"):
        collect_results([tmp_path])


def test_settings_the_group_keys_miss_become_a_variant(tmp_path):
    """Two SMSKD ablations share strategy and method: their differing switch must split them."""
    for seed in (0, 1):
        for reference in (True, False):
            _write(
                tmp_path, f"s{seed}{reference}", strategy="smskd", method="smskd", seed=seed,
                test_acc=80.0 + seed + 5 * reference, teacher="big",
            )  # fmt: skip
            path = tmp_path / f"s{seed}{reference}" / "results.json"
            results = json.loads(path.read_text())
            results["config"] = {
                "recipe": {"name": "smoke"}, "seed": seed,
                "strategy": {"name": "smskd", "reference": reference},
                "paths": {"output_dir": str(path.parent)},
            }  # fmt: skip
            path.write_text(json.dumps(results))
    table = summarise(collect_results([tmp_path])).set_index("variant")
    assert sorted(table.index) == ["strategy.reference=false", "strategy.reference=true"]
    assert table.loc["strategy.reference=true", "test_acc_mean"] == pytest.approx(85.5)
    assert table.loc["strategy.reference=false", "n"] == 2  # seeds and paths never split


def test_report_writes_tables_and_figures(tmp_path, run_cli):
    for seed in (0, 1):
        _write(tmp_path / "runs", f"ce{seed}", strategy="plain", method="ce", seed=seed,
               test_acc=80.0 + seed)  # fmt: skip
    run = run_cli("report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    assert run.code == 0, run.err
    rows = _markdown_rows((tmp_path / "report" / "summary.md").read_text())
    assert [row["data"] for row in rows] == ["toy"]
    assert (tmp_path / "report" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    latex = (tmp_path / "report" / "summary.tex").read_text()
    assert "\\toprule" in latex and "80.50 $\\pm$ 0.71" in latex and "mlp\\_small" in latex


def _markdown_rows(markdown: str) -> list[dict[str, str]]:
    """The first table of ``markdown`` (summary.md: the configurations) as header -> cell, one
    dict per row."""
    lines = [line for line in markdown.split("\n\n")[0].splitlines() if line.startswith("|")]
    split = re.compile(r"(?<!\\)\|")

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in split.split(line.strip().strip("|"))]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]


def _section_rows(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of the table under ``title`` in summary.md."""
    return _markdown_rows(markdown.split(f"\n{title}\n", 1)[1].lstrip("\n"))


def test_report_aggregates_seeds_into_csv_markdown_and_latex_and_lists_failures(tmp_path, run_cli):
    runs = tmp_path / "runs"
    acc, teacher_acc, wall = [81.0, 84.0, 88.5], [90.0, 92.0, 91.0], [3.0, 5.0, 10.0]
    for seed in range(3):
        _write(
            runs / "deep" / "sweep", f"kd{seed}", strategy="kd", method="kd", seed=seed,
            test_acc=acc[seed], teacher="big", teacher_acc=teacher_acc[seed],
            extra_params=1234, wall_time_s=wall[seed], student_params=50,
        )  # fmt: skip
        _write(runs, f"ce{seed}", strategy="plain", method="ce", seed=seed, test_acc=70.0 + seed,
               student_params=50)  # fmt: skip
    (runs / "broken").mkdir()
    failure = {"status": "failed", "error": "UserError: bad epochs", "strategy": "kd", "seed": 3}
    (runs / "broken" / "failure.json").write_text(json.dumps(failure))
    (runs / "killed").mkdir()
    (runs / "killed" / "run.json").write_text(json.dumps({"config_key": "k", "strategy": "kd"}))

    run = run_cli("report", str(runs), "--out", str(tmp_path / "report"))
    assert run.code == 0, run.err
    assert "failed runs: 2" in run.out and "unfinished" in run.out

    retention = [100 * a / t for a, t in zip(acc, teacher_acc, strict=True)]
    with (tmp_path / "report" / "summary.csv").open() as f:
        kd = next(row for row in csv.DictReader(f) if row["strategy"] == "kd")
    expected = {
        "n": 3, "extra_params": 1234, "compression_ratio": 20.0, "student_params": 50,
        "test_acc_mean": statistics.mean(acc), "test_acc_std": statistics.stdev(acc),
        "test_acc_last_mean": statistics.mean(acc) - 0.5,
        "acc_best_mean": statistics.mean(acc) + 1, "acc_last_mean": statistics.mean(acc),
        "teacher_acc_mean": statistics.mean(teacher_acc),
        "retention_mean": statistics.mean(retention) / 100,
        "retention_std": statistics.stdev(retention) / 100,
        "time_s_mean": statistics.mean(wall), "time_s_std": statistics.stdev(wall),
        "vs_ce": statistics.mean(acc) - 71.0,
    }  # fmt: skip
    assert {k: float(kd[k]) for k in expected} == pytest.approx(expected)

    markdown = (tmp_path / "report" / "summary.md").read_text()
    (kd_row,) = [row for row in _markdown_rows(markdown) if row["strategy"] == "kd"]
    assert kd_row == kd_row | {
        "ratio": "20.0x",
        "extra params": "1,234",
        "test acc %": f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}",
        "retention %": f"{statistics.mean(retention):.2f} ± {statistics.stdev(retention):.2f}",
        "n": "3",
        "time s": f"{statistics.mean(wall):.0f}",
    }
    failed = _section_rows(markdown, "Failed runs: 2")
    assert {
        "path": str(runs / "broken"), "status": "failed", "strategy": "kd", "method": "-",
        "seed": "3", "error": "UserError: bad epochs",
    } in failed  # fmt: skip
    assert [row["status"] for row in failed if row["path"] == str(runs / "killed")] == [
        "unfinished"
    ]

    latex = (tmp_path / "report" / "summary.tex").read_text()
    (kd_line,) = [line for line in latex.splitlines() if "& kd & kd &" in line]
    assert f"{statistics.mean(retention):.2f} $\\pm$ {statistics.stdev(retention):.2f}" in kd_line
    assert "& 1,234 &" in kd_line and "20.0$\\times$" in kd_line


def test_report_with_only_failed_runs_shows_them_and_fails(tmp_path, run_cli):
    (tmp_path / "broken").mkdir()
    failure = {"status": "failed", "error": "RuntimeError: boom", "seed": 0}
    (tmp_path / "broken" / "failure.json").write_text(json.dumps(failure))
    run = run_cli("report", str(tmp_path))
    assert run.code == 2 and "no completed results.json" in run.err
    assert "failed runs: 1" in run.out and "boom" in run.out


def test_plain_runs_of_a_compression_scan_take_the_ratio_of_their_student_size(tmp_path):
    from hpmkd.report.plots import scan_ratios

    for params in (100, 50):
        _write(tmp_path, f"kd{params}", strategy="kd", method="kd", seed=0, test_acc=80.0,
               teacher="big", student_params=params)  # fmt: skip
        _write(tmp_path, f"ce{params}", strategy="plain", method="ce", seed=0, test_acc=75.0,
               student_params=params)  # fmt: skip
    _write(tmp_path, "ce_alone", strategy="plain", method="ce", seed=0, test_acc=75.0,
           student_params=7)  # fmt: skip
    table = summarise(collect_results([tmp_path]))
    ratios = dict(zip(table["strategy"] + "/" + table["student_params"].astype(str),
                      scan_ratios(table), strict=True))  # fmt: skip
    assert ratios["plain/100"] == ratios["kd/100"] == 10.0
    assert ratios["plain/50"] == ratios["kd/50"] == 20.0
    assert ratios["plain/7"] != ratios["plain/7"]  # no distilled run of that size: NaN


def test_configurations_keep_the_order_of_the_sweep_members(tmp_path):
    for member, strategy in ((10, "kd"), (2, "plain"), (1, "takd")):
        _write(tmp_path, str(member), strategy=strategy, method="x", seed=0, test_acc=80.0)
    assert list(summarise(collect_results([tmp_path]))["strategy"]) == ["takd", "plain", "kd"]


def test_figure_labels_show_a_scanned_setting_in_every_row():
    from hpmkd.report.plots import configuration_labels

    scan = pd.DataFrame({
        "strategy": ["kd"] * 3, "method": ["kd"] * 3,
        "variant": [f"student.target_ratio={r}" for r in (5, 10, 20)],
    })  # fmt: skip
    assert configuration_labels(scan) == [f"kd [target_ratio={r}]" for r in (5, 10, 20)]
    ablation = scan.assign(variant=["a.acm=true", "a.acm=true", "a.acm=false"])
    assert configuration_labels(ablation) == ["kd", "kd", "kd [acm=false]"]


# --- whole configurations, seeds, repeats, schemas (issue 13) ----------------------------------


def _config(run_dir, seed: int) -> dict:
    """The resolved configuration `hpmkd train +strategy=kd recipe=smoke` records."""
    return {
        "seed": seed, "resume": False, "skip_complete": True, "teacher_cache": True, "tags": [],
        "store": {"root": "/cache/store"},
        "paths": {"cache_dir": "/cache", "output_root": "/out", "output_dir": str(run_dir)},
        "data": {"name": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "split_seed": 0,
                 "normalize": {"mean": None, "std": None}, "augment": {}},
        "teacher": {"arch": "mlp_large", "params": {"hidden": [256, 512, 256]}, "seed": None},
        "student": {"arch": "mlp_small", "params": {"hidden": [64, 32]}, "target_ratio": None},
        "recipe": {"name": "smoke", "epochs": 3, "batch_size": 128,
                   "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.003}},
        "trainer": {"accelerator": "auto", "devices": 1, "precision": "auto",
                    "enable_progress_bar": True},
        "perf": {"channels_last": "auto", "device_data": "auto", "compile": False},
        "logger": {"csv": {"save_dir": str(run_dir), "name": "csv"}},
        "method": {"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
        "strategy": {"name": "kd"},
    }  # fmt: skip


def _run(root, name, *, seed=0, test_acc=80.0, edit=None, mtime=None, **fields) -> Path:
    """A results.json as a finished kd run writes it (schema 2); ``edit`` changes its config,
    ``fields`` its top-level entries; ``mtime``: when it finished (seconds since the epoch)."""
    run_dir = Path(root) / name
    config = _config(run_dir, seed)
    if edit:
        edit(config)
    results = {
        "status": "completed", "schema": SCHEMA_VERSION, "strategy": "kd", "method": "kd",
        "seed": seed, "data": {"name": "digits", "fingerprint": "8b11"},
        "student": {"arch": "mlp_small", "params": 6570, "extra_params": 0},
        "teacher": {"arch": "mlp_large", "params": 282122, "val_acc": 99.0, "test_acc": 94.0},
        "details": {}, "compression_ratio": 282122 / 6570, "epochs": 3,
        "acc_last": test_acc + 2, "acc_best": test_acc + 3, "val_acc_history": [70.0, test_acc],
        "curves": {}, "test_acc": test_acc, "test_acc_last": test_acc, "teacher_acc": 94.0,
        "retention": test_acc / 94.0, "wall_time_s": 5.0,
        "perf": {"device": "cpu", "precision": "32-true", "channels_last": False},
        "config": config,
    } | fields  # fmt: skip
    run_dir.mkdir(parents=True)
    path = run_dir / "results.json"
    path.write_text(json.dumps(results))
    (run_dir / "run.json").write_text(json.dumps({"config_key": "k", "strategy": "kd"}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return run_dir


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough that rich folds no cell the test reads."""
    monkeypatch.setenv("COLUMNS", "400")


def _mts(config: dict) -> None:
    config["temperature"] = {"name": "mts", "t0": 4.0, "gamma": 1.0, "t_min": 2.0, "t_max": 6.0}


def test_configurations_that_differ_in_a_node_one_lacks_are_two_rows(tmp_path):
    """`temperature=mts` adds a top-level node the default run lacks: it used to merge them."""
    plain_t, mts = [80.0, 83.0], [70.0, 71.5]
    for seed in (0, 1):
        _run(tmp_path, f"const{seed}", seed=seed, test_acc=plain_t[seed])
        _run(tmp_path, f"mts{seed}", seed=seed, test_acc=mts[seed], edit=_mts)
    table = summarise(collect_results([tmp_path])).set_index("variant")
    assert len(table) == 2 and all(v.startswith("temperature") for v in table.index)
    assert "temperature=unset" in table.index
    (mts_variant,) = [v for v in table.index if "name=mts" in v]
    assert "temperature.t0=4.0" in mts_variant
    assert table.loc["temperature=unset", "test_acc_mean"] == pytest.approx(
        statistics.mean(plain_t)
    )
    assert table.loc[mts_variant, "test_acc_std"] == pytest.approx(statistics.stdev(mts))
    assert list(table["n"]) == [2, 2]


def test_n_counts_seeds_and_a_repeated_seed_counts_once_with_its_newest_results(tmp_path, run_cli):
    runs = tmp_path / "runs"
    # natural order puts "a" first; the newest by finish time is "b", so order cannot decide
    _run(runs, "b_seed0_again", seed=0, test_acc=82.0, mtime=2_000_000)
    _run(runs, "a_seed0", seed=0, test_acc=60.0, mtime=1_000_000)
    _run(runs, "c_seed1", seed=1, test_acc=85.0, mtime=1_500_000)
    table = summarise(collect_results([runs]))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n"] == 2 and row["repeats"] == 1
    assert row["test_acc_mean"] == pytest.approx(statistics.mean([82.0, 85.0]))
    assert row["test_acc_std"] == pytest.approx(statistics.stdev([82.0, 85.0]))

    run = run_cli("report", str(runs), "--out", str(tmp_path / "report"))
    assert run.code == 0, run.err
    assert "1 repeat dropped" in run.out and "2 runs, 1 configurations" in run.out
    markdown = (tmp_path / "report" / "summary.md").read_text()
    assert "1 repeat dropped" in markdown
    (md_row,) = _markdown_rows(markdown)
    assert md_row["n"] == "2"
    assert (
        md_row["test acc %"]
        == f"{statistics.mean([82.0, 85.0]):.2f} ± {statistics.stdev([82.0, 85.0]):.2f}"
    )


def test_same_configuration_and_seed_twice_is_n_1(tmp_path):
    _run(tmp_path, "first", seed=3, test_acc=70.0, mtime=1_000_000)
    _run(tmp_path, "second", seed=3, test_acc=75.0, mtime=1_000_100)
    table = summarise(collect_results([tmp_path]))
    assert list(table["n"]) == [1] and list(table["repeats"]) == [1]
    assert table["test_acc_mean"].tolist() == [75.0]
    assert "1 repeat dropped" in format_markdown(table)


def test_speed_only_settings_never_split_a_configuration(tmp_path):
    def fast(config: dict) -> None:
        config["perf"] = {"channels_last": True, "device_data": True, "compile": True}
        config["trainer"]["enable_progress_bar"] = False
        config |= {"teacher_cache": False, "skip_complete": False, "tags": ["x"], "logger": None,
                   "optimized_metric": "test_acc"}  # fmt: skip
        config["store"]["root"] = "/elsewhere/store"
        config["paths"]["cache_dir"] = "/elsewhere"

    _run(tmp_path, "slow", seed=0, test_acc=80.0)
    _run(tmp_path, "fast", seed=1, test_acc=84.0, edit=fast,
         perf={"device": "cpu", "precision": "32-true", "channels_last": True})  # fmt: skip
    table = summarise(collect_results([tmp_path]))
    assert len(table) == 1 and table["n"].tolist() == [2] and table["variant"].tolist() == ["-"]
    assert table["test_acc_mean"].tolist() == [pytest.approx(82.0)]


def test_a_setting_that_changes_results_still_splits(tmp_path):
    def lr(config: dict) -> None:
        config["recipe"]["optimizer"]["lr"] = 0.01

    _run(tmp_path, "a", seed=0, test_acc=80.0)
    _run(tmp_path, "b", seed=0, test_acc=81.0, edit=lr)
    table = summarise(collect_results([tmp_path]))
    assert sorted(table["variant"]) == ["recipe.optimizer.lr=0.003", "recipe.optimizer.lr=0.01"]
    assert table["repeats"].tolist() == [0, 0]


def test_older_schema_and_unreadable_results_are_set_aside_never_merged(tmp_path, run_cli):
    runs = tmp_path / "runs"
    _run(runs, "current", seed=0, test_acc=80.0)
    old = _run(runs, "old", seed=1, test_acc=50.0)
    results = json.loads((old / "results.json").read_text())
    del results["schema"]
    (old / "results.json").write_text(json.dumps(results))
    (runs / "torn").mkdir()
    (runs / "torn" / "results.json").write_text('{"status": "compl')
    (runs / "torn_failure").mkdir()
    (runs / "torn_failure" / "failure.json").write_text('{"status": "fai')
    no_config = _run(runs, "no_config", seed=2, test_acc=40.0, config=None)

    assert collect_results([runs])["test_acc"].tolist() == [80.0]
    run = run_cli("report", str(runs), "--out", str(tmp_path / "report"))
    assert run.code == 0, run.err
    assert "set aside, not merged: 3" in run.out and "failed runs: 1" in run.out
    markdown = (tmp_path / "report" / "summary.md").read_text()
    (row,) = _markdown_rows(markdown)
    assert row["n"] == "1" and row["test acc %"] == "80.00"
    aside = {r["path"]: r for r in _section_rows(markdown, "Set aside, not merged: 3")}
    assert aside[str(old)]["reason"].startswith("results.json of schema 1;")
    assert [aside[str(old)][c] for c in ("strategy", "method", "seed")] == ["kd", "kd", "1"]
    assert aside[str(runs / "torn")]["reason"].startswith("unreadable results.json:")
    assert aside[str(no_config)]["reason"].startswith("unreadable config:")
    (failed,) = _section_rows(markdown, "Failed runs: 1")
    assert failed["path"] == str(runs / "torn_failure")
    assert [failed[c] for c in ("status", "strategy", "method", "seed")] == ["failed", *"---"]
    assert failed["error"].startswith("unreadable failure.json:")


def test_only_older_schema_results_is_a_user_error_that_lists_them(tmp_path, run_cli, wide):
    old = _run(tmp_path, "old", seed=0, test_acc=50.0, schema=1)
    run = run_cli("report", str(tmp_path))
    assert run.code == 2 and "no completed results.json of schema 2" in run.err
    assert (
        "1 set aside" in run.err and "set aside, not merged: 1" in run.out and str(old) in run.out
    )


def test_a_run_resumed_into_another_is_not_unfinished(tmp_path, run_cli):
    from hpmkd.report import collect_failures
    from hpmkd.results import RESUMED_INTO_FILE

    finished = _run(tmp_path, "finished", seed=0, test_acc=80.0)
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "run.json").write_text(json.dumps({"config_key": "k", "strategy": "kd"}))
    marker = {"resumed_into": str(finished), "time": 1_700_000_000}
    (interrupted / RESUMED_INTO_FILE).write_text(json.dumps(marker))
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "run.json").write_text(json.dumps({"config_key": "k"}))

    assert [f["path"] for f in collect_failures([tmp_path])] == [str(tmp_path / "killed")]
    run = run_cli("report", str(tmp_path))
    assert run.code == 0 and "failed runs: 1" in run.out and "1 runs, 1 configurations" in run.out


def test_time_is_the_total_over_resumed_segments_when_recorded(tmp_path):
    time = {"total_s": 30.0, "train_s": 20.0, "discarded_s": 4.0, "units": [], "segments": []}
    _run(tmp_path, "resumed", seed=0, test_acc=80.0, wall_time_s=6.0, time=time)
    _run(tmp_path, "older_layout", seed=1, test_acc=80.0, wall_time_s=10.0)
    table = summarise(collect_results([tmp_path]))
    assert table["time_s_mean"].tolist() == [pytest.approx(statistics.mean([30.0, 10.0]))]
    (row,) = _markdown_rows(format_markdown(table))
    assert row["time s"] == "20"


def test_retention_is_the_recorded_test_over_test_ratio(tmp_path):
    """acc_best (validation) and the teacher's val_acc differ from the test accuracies: the
    report's retention must be results.json's (student test / teacher test)."""
    for seed, acc in enumerate([80.0, 90.0]):
        _run(tmp_path, f"r{seed}", seed=seed, test_acc=acc)
    table = summarise(collect_results([tmp_path]))
    expected = statistics.mean([80.0 / 94.0, 90.0 / 94.0])
    assert table["retention_mean"].tolist() == [pytest.approx(expected)]


def _hpmkd(chosen: dict, acm: dict | None) -> dict:
    def edit(config: dict) -> None:
        config["strategy"] = {"name": "hpmkd", "components": {"acm": acm is not None}}

    details = {"config": chosen, "acm": acm}
    return {"edit": edit, "strategy": "hpmkd", "method": "kd", "details": details}


def test_acm_choices_show_per_row_as_an_outcome_not_a_key(tmp_path, run_cli, wide):
    chosen = {"T0": 2.0, "alpha": 0.5, "lr": 0.001, "epochs": 60, "epsilon": 0.1}
    other = chosen | {"T0": 3.0}
    history = {"source": "history", "n_history": 12, "predicted": 0.9, "reason": "r"}
    _run(tmp_path, "h0", seed=0, test_acc=80.0, **_hpmkd(chosen, history))
    _run(tmp_path, "h1", seed=1, test_acc=81.0, **_hpmkd(other, history))
    _run(tmp_path, "off", seed=0, test_acc=79.0, **_hpmkd(chosen, None))
    _run(tmp_path, "kd", seed=0, test_acc=78.0)
    table = summarise(collect_results([tmp_path]))
    rows = {row["variant"]: row for row in _markdown_rows(format_markdown(table))}
    on, off = rows["strategy.components.acm=true"], rows["strategy.components.acm=false"]
    assert on["n"] == "2"  # two seeds, two different choices: one row
    first, second = (f"T0 {t}, α 0.5, lr 0.001, 60 ep, ε 0.1 (12 rows)" for t in (2, 3))
    assert on["ACM choice"] == f"{first}; {second}"
    assert off["ACM choice"] == "T0 2, α 0.5, lr 0.001, 60 ep, ε 0.1 (ACM off)"
    (kd,) = [row for row in rows.values() if row["strategy"] == "kd"]
    assert kd["ACM choice"] == "-"
    run = run_cli("report", str(tmp_path))
    assert run.code == 0 and "ACM choice" in run.out and f"{first}; {second}" in run.out


def test_a_repeat_keeps_its_configuration_in_the_order_it_first_ran(tmp_path):
    _run(tmp_path, "1", seed=0, test_acc=70.0, mtime=1_000_000)
    _run(tmp_path, "2", seed=0, test_acc=71.0, edit=_mts, mtime=1_000_100)
    _run(tmp_path, "3", seed=0, test_acc=72.0, mtime=1_000_200)
    table = summarise(collect_results([tmp_path]))
    assert table["variant"].tolist()[0] == "temperature=unset"
    assert table["test_acc_mean"].tolist() == [72.0, 71.0]


def test_tables_escape_names_for_latex_and_markdown():
    row = {c: "x" for c in ("data", "teacher", "strategy", "method")}
    row |= {"student": "mlp_small", "variant": "a=#1 $T^{2}~\\x & 50% | b", "n": 2,
            "compression_ratio": 20.0, "extra_params": 1234, "time_s_mean": 3.0, "vs_ce": 1.0,
            "acm": None, "repeats": 0}  # fmt: skip
    for metric in ("test_acc", "test_acc_last", "acc_best", "teacher_acc", "retention"):
        row |= {f"{metric}_mean": 0.805, f"{metric}_std": 0.007}
    table = pd.DataFrame([row])
    latex = format_latex(table)
    (line,) = [line for line in latex.splitlines() if "mlp" in line]
    escaped = r"a=\#1 \$T\textasciicircum \{2\}\textasciitilde \textbackslash x \& 50\% | b"
    assert f"mlp\\_small & x & x & {escaped} & 20.0$\\times$ & 1,234 & 0.81 $\\pm$ 0.01" in line
    assert r"test acc \%" in latex and latex.startswith("\\begin{tabular}{llllllrrrrrrrrrr}")
    (md,) = _markdown_rows(format_markdown(table))
    assert md["variant"] == r"a=#1 $T^{2}~\x & 50% \| b"
