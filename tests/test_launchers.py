"""Sweep launchers: the SLURM preset (hydra/launcher=hpmkd_slurm) and the local parallel
launcher plugin (hydra/launcher=parallel)."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from hpmkd import config
from tests.conftest import TINY


def _compose(*overrides: str) -> DictConfig:
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture
def submitit():
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="hydra-submitit-launcher is not installed (uv sync --extra slurm)",
    )
    return pytest.importorskip("submitit")


@pytest.mark.parametrize(
    ("overrides", "gpus", "nodes"),
    [((), 1, 1), (("trainer.devices=4", "+trainer.num_nodes=2"), 4, 2)],
)
def test_slurm_preset_follows_the_trainer(submitit, overrides, gpus, nodes):
    cfg = _compose("hydra/launcher=hpmkd_slurm", "trainer=gpu", *overrides)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (gpus, gpus, nodes)
    assert launcher.partition is None and launcher.timeout_min > 0


def test_slurm_preset_asks_for_one_task_per_gpu_in_the_sbatch_script(
    submitit, hpmkd_env, monkeypatch
):
    """Lightning under SLURM needs --ntasks-per-node equal to trainer.devices."""
    cfg = _compose(
        "hydra/launcher=hpmkd_slurm",
        "trainer=gpu",
        "trainer.devices=4",
        "+trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
    )
    submitted = {}

    def capture(executor, fn, *iterable):
        submitted["executor"] = executor
        raise KeyboardInterrupt  # stop before sbatch

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    fake_bin = hpmkd_env / "bin"  # submitit wants srun on PATH before it builds a script
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=print, config=cfg)
    with pytest.raises(KeyboardInterrupt):
        launcher.launch([["seed=0"]], initial_job_idx=0)
    script = submitted["executor"]._executor._make_submission_file_text("true", "uid")
    for line in ("--ntasks-per-node=4", "--gpus-per-node=4", "--nodes=2", "--partition=gpu"):
        assert f"#SBATCH {line}\n" in script


def test_parallel_launcher_is_selectable():
    cfg = _compose("hydra/launcher=parallel", "hydra.launcher.workers=2")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "ParallelLauncher"
    assert (launcher.workers, launcher.devices, launcher.threads_per_worker) == (2, None, None)


def test_parallel_launcher_refuses_a_multi_device_member(run_cli):
    run = run_cli("train", "-m", "hydra/launcher=parallel", "trainer.devices=2", *TINY)
    assert run.code == 2
    assert "gives each member one device" in run.err
    assert run.results() == []


@pytest.mark.slow
def test_parallel_sweep_runs_members_at_once_and_survives_a_failing_one(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    run = run_cli(
        "train",
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.workers=2",
        "hydra.launcher.threads_per_worker=1",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        "recipe.epochs=1,0,2",  # member 1 is a user error
    )
    assert run.code == 2 and "recipe.epochs" in run.err  # Hydra reports the failed member
    assert "on cpu worker 1" in run.out  # two slots ran members
    done = {n: json.loads((sweep / n / "results.json").read_text()) for n in ("0", "2")}
    assert [done[n]["epochs"] for n in ("0", "2")] == [1, 2]
    assert not (sweep / "1" / "results.json").exists()
    failure = json.loads((sweep / "1" / "failure.json").read_text())
    assert failure["status"] == "failed" and "recipe.epochs" in failure["error"]


@pytest.mark.slow
def test_parallel_rerun_starts_no_process_for_complete_members(run_cli, tmp_path):
    common = (
        "train", "-m", "hydra/launcher=parallel", "hydra.launcher.workers=2",
        "hydra.launcher.threads_per_worker=1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY,
    )  # fmt: skip
    first = run_cli(*common, "recipe.epochs=1,0,2")  # member 1 is a user error
    assert first.code == 2
    before = {n: (tmp_path / "sweep" / n / "results.json").stat().st_mtime_ns for n in "02"}
    again = run_cli(*common, "recipe.epochs=1,0,2")
    assert again.code == 2  # the failed member runs (and fails) again
    log = again.out + again.err
    assert "#0 complete already, not started" in log and "#2 complete already" in log
    assert "#1 complete already" not in log and "#1 failed" in log
    after = {n: (tmp_path / "sweep" / n / "results.json").stat().st_mtime_ns for n in "02"}
    assert after == before
    changed = run_cli(*common, "recipe.epochs=1,0,3")  # another config in member 2's dir
    assert "#2 complete already" not in changed.out + changed.err
    assert json.loads((tmp_path / "sweep" / "2" / "results.json").read_text())["epochs"] == 3
