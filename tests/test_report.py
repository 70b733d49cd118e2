import json
import statistics

import pytest

from hpmkd.report import collect_results, summarise
from hpmkd.report.tables import format_markdown


def _write(root, name, *, strategy, method, seed, test_acc, teacher=None):
    results = {
        "status": "completed",
        "strategy": strategy,
        "method": method,
        "seed": seed,
        "data": {"name": "toy"},
        "epochs": 5,
        "config": {"recipe": {"name": "smoke"}},
        "student": {"arch": "mlp_small", "params": 100, "extra_params": 0},
        "teacher": {"arch": teacher, "params": 1000} if teacher else None,
        "test_acc": test_acc,
        "test_acc_last": test_acc - 0.5,
        "acc_best": test_acc + 1,
        "acc_last": test_acc,
        "teacher_acc": 90.0 if teacher else None,
        "retention": None,
        "compression_ratio": 10.0 if teacher else None,
        "wall_time_s": 1.0,
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
