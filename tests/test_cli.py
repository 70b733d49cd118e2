"""End-to-end `hpmkd train` on tiny settings (embedded digits data, 3-epoch smoke recipe)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from tests.conftest import TINY

pytestmark = pytest.mark.slow


def test_plain_train_writes_results_and_learns(run_cli):
    run = run_cli("train", *TINY)
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["status"] == "completed" and results["strategy"] == "plain"
    assert results["test_acc"] > 50 and results["acc_best"] > 50  # 10 classes: chance is 10 %
    assert results["acc_best"] >= results["acc_last"]
    assert results["epochs"] == 3 and len(results["val_acc_history"]) == 3
    assert results["student"]["params"] == 6570  # mlp_small on 64 inputs, 10 classes
    assert results["config"]["recipe"]["name"] == "smoke"
    assert results["teacher"] is None and results["compression_ratio"] is None
    # the deployable student holds the student's weights only, loadable into a fresh model
    from hpmkd.models import build_model, load_weights

    student = build_model("mlp_small", num_classes=10, input_shape=(1, 8, 8))
    weights = next(run.outputs.rglob("student.pt"))
    load_weights(student, str(weights), source=str(weights))
    assert "hpmkd train: plain on digits" in run.out


def test_kd_trains_teacher_once_then_reuses_it(run_cli):
    first = run_cli("train", "+strategy=kd", *TINY)
    assert first.code == 0, first.err
    second = run_cli("train", "+strategy=kd", *TINY)
    assert second.code == 0, second.err
    a, b = second.results()
    assert a["teacher"]["extra"]["source"] == "trained"
    assert b["teacher"]["extra"]["source"] == "store"
    assert a["teacher"]["extra"]["store_key"] == b["teacher"]["extra"]["store_key"]
    first_log = (sorted(first.outputs.rglob("train.log"))[0]).read_text()
    second_log = (sorted(second.outputs.rglob("train.log"))[1]).read_text()
    assert "not in the store, training it first" in first_log
    assert "reused from the store" in second_log
    assert a["teacher_acc"] == b["teacher_acc"] > 50
    assert b["test_acc"] > 50 and b["method"] == "kd"
    # the same seed gives the same student whether the teacher was trained or reused
    assert a["val_acc_history"] == b["val_acc_history"]
    assert b["compression_ratio"] == pytest.approx(b["teacher"]["params"] / b["student"]["params"])
    listing = run_cli("store", "ls")
    # the teacher and its prediction cache
    assert listing.code == 0 and "2 artifacts" in listing.out and "mlp_large" in listing.out
    assert "teacher_cache" in listing.out


def test_teacher_from_explicit_checkpoint(run_cli, tmp_path):
    from hpmkd.models import build_model

    teacher = build_model("mlp", num_classes=10, input_shape=(1, 8, 8), hidden=[32])
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    run = run_cli(
        "train",
        "+strategy=kd",
        "teacher=mlp",
        "teacher.params.hidden=[32]",
        f"teacher.checkpoint={path}",
        *TINY,
    )
    assert run.code == 0, run.err
    (results,) = run.results()
    assert results["teacher"]["extra"] == {"source": "checkpoint", "checkpoint": str(path)}


def test_multirun_over_seeds(run_cli):
    run = run_cli("train", "-m", "seed=0,1", *TINY)
    assert run.code == 0, run.err
    results = run.results()
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert results[0]["val_acc_history"] != results[1]["val_acc_history"]
    report = run_cli("report", str(run.outputs), "--out", str(run.outputs / "report"))
    assert report.code == 0, report.err
    summary = (run.outputs / "report" / "summary.md").read_text()
    mean = sum(r["test_acc"] for r in results) / 2
    assert re.search(rf"\| {mean:.2f} ± .*\| 2 +\|", summary), summary


def test_crashed_run_resumes_from_last_checkpoint(run_cli, hpmkd_env, monkeypatch):
    from hpmkd.engine.module import DistillModule

    def crash_after_second_epoch(self):
        if self.current_epoch == 2:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(DistillModule, "on_train_epoch_start", crash_after_second_epoch)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_cli("train", *TINY, "checkpoint_every_s=0")  # last.ckpt after every epoch
    outputs = hpmkd_env / "outputs"
    assert list(outputs.rglob("results.json")) == []  # nothing claims success
    assert len(list(outputs.rglob("last.ckpt"))) == 1
    resumed = run_cli("train", "resume=true", *TINY)
    assert resumed.code == 0, resumed.err
    (results,) = resumed.results()
    assert results["epochs"] == 3 and len(results["val_acc_history"]) == 3
    run_dir = next(resumed.outputs.rglob("results.json")).parent
    # the resuming process worked in the interrupted directory; its own one points there
    (pointer,) = resumed.outputs.rglob("resumed_into.json")
    assert json.loads(pointer.read_text())["resumed_into"] == str(run_dir)
    assert "resuming from" in (pointer.parent / "train.log").read_text()

    # the resumed run trained only the missing third epoch (epochs count from 0); the first
    # process's metrics are kept beside
    def trained(name: str) -> set[str]:
        with open(run_dir / "csv" / name) as f:
            return {row["epoch"] for row in csv.DictReader(f) if row.get("train/loss")}

    assert trained("metrics.csv") == {"2"}
    assert trained("metrics.before-segment2.csv") == {"0", "1"}


def test_resume_without_a_matching_run_is_a_user_error(run_cli):
    run = run_cli("train", "resume=true", *TINY)
    assert run.code == 2
    assert "no unfinished run with this configuration" in run.err


def test_hydra_cfg_job_prints_config_without_running(run_cli):
    run = run_cli("train", "+strategy=kd", "--cfg", "job")
    assert run.code == 0
    assert "method:" in run.out and "temperature: 4.0" in run.out
    assert run.results() == []


def test_models_command_lists_parameter_counts(run_cli):
    run = run_cli("models")
    assert run.code == 0
    assert "resnet56" in run.out and "861,620" in run.out  # CIFAR-100 default, CRD zoo figure


def test_takd_chains_teacher_assistant_student_and_reuses_both(run_cli):
    first = run_cli("train", "+strategy=takd", "assistant.params.hidden=[128]", *TINY)
    assert first.code == 0, first.err
    second = run_cli("train", "+strategy=takd", "assistant.params.hidden=[128]", *TINY)
    a, b = second.results()
    assert [m["role"] for m in a["intermediates"]] == ["assistant"]
    assert a["intermediates"][0]["extra"]["source"] == "trained"
    assert b["intermediates"][0]["extra"]["source"] == "store"
    assert b["teacher"]["extra"]["source"] == "store"
    assert a["teacher"]["params"] > a["intermediates"][0]["params"] > a["student"]["params"]
    assert b["test_acc"] > 50


def test_fixed_teacher_seed_shares_one_teacher_across_a_seed_sweep(run_cli):
    run = run_cli("train", "-m", "+strategy=kd", "teacher.seed=7", "seed=0,1", *TINY)
    assert run.code == 0, run.err
    a, b = run.results()
    assert a["teacher"]["extra"]["store_key"] == b["teacher"]["extra"]["store_key"]
    assert {a["teacher"]["extra"]["source"], b["teacher"]["extra"]["source"]} == {
        "trained",
        "store",
    }
    assert a["val_acc_history"] != b["val_acc_history"]


def test_a_sweep_member_that_fails_is_recorded_and_the_rest_finish_and_rerun_skips(
    run_cli, tmp_path
):
    sweep = tmp_path / "sweep"
    args = ("train", "-m", *TINY, "recipe.epochs=1,0", f"hydra.sweep.dir={sweep}")
    first = run_cli(*args)
    assert first.code != 0  # Hydra reports the failed member
    ok = sweep / "0" / "results.json"
    assert ok.is_file() and not (sweep / "1" / "results.json").exists()
    failure = json.loads((sweep / "1" / "failure.json").read_text())
    assert failure["status"] == "failed" and "recipe.epochs" in failure["error"]
    assert "recipe.epochs=0" in failure["overrides"]
    report = run_cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert report.code == 0 and "failed runs: 1" in report.out
    assert "Failed runs: 1" in (tmp_path / "report" / "summary.md").read_text()
    # a second run of the same sweep leaves the finished member alone
    mtime = ok.stat().st_mtime_ns
    again = run_cli(*args)
    assert "complete already" in again.err + again.out
    assert ok.stat().st_mtime_ns == mtime
