import csv
import json
import statistics

import pandas as pd
import pytest

from hpmkd.report import collect_results, summarise
from hpmkd.report.tables import format_markdown
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
    assert (tmp_path / "report" / "summary.md").read_text().count("| toy |") == 1
    assert (tmp_path / "report" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    latex = (tmp_path / "report" / "summary.tex").read_text()
    assert "\\toprule" in latex and "80.50 $\\pm$ 0.71" in latex and "mlp\\_small" in latex


def _markdown_rows(markdown: str) -> list[dict[str, str]]:
    """The configuration table of summary.md as header -> cell, one dict per row."""
    lines = [line for line in markdown.split("\n\n")[0].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


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
    failed = markdown.split("Failed runs: 2", 1)[1]
    assert f"| {runs / 'broken'} | failed | kd | - | 3 | UserError: bad epochs |" in failed
    assert f"| {runs / 'killed'} | unfinished |" in failed

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
