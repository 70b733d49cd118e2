"""DDP on the CPU: `hpmkd train trainer=ddp_cpu` spawns two gloo workers per fit, in-process
and inside a Hydra multirun; and the pieces that decide how a fit is spread over processes."""

from __future__ import annotations

import functools
import itertools
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import OmegaConf

from hpmkd.data.augment import BatchTransform
from hpmkd.data.loader import SplitsDataModule
from hpmkd.engine.context import RunContext, prepare_method
from hpmkd.engine.ddp import DDPStrategy, _SpawnLauncher, launched_rank
from hpmkd.engine.fit import make_trainer, one_device, per_rank
from hpmkd.engine.module import DistillModule
from hpmkd.errors import UserError
from hpmkd.methods import build_method
from hpmkd.models import build_model
from hpmkd.parallel import DEVICE_ENV
from tests.conftest import TINY

DDP_CPU = ["trainer=ddp_cpu", *TINY]
DDP_KWARGS = {
    "accelerator": "cpu",
    "devices": 2,
    "num_nodes": 1,
    "sync_batchnorm": False,
    "strategy": {"_target_": "hpmkd.engine.ddp.DDPStrategy", "process_group_backend": "gloo"},
    "enable_progress_bar": False,
}
# what marks a process as one of several ranks started by a launcher
LAUNCHER_ENV = (
    "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "LSB_JOBID", DEVICE_ENV
)  # fmt: skip


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process that no launcher started (and no parallel-pipeline slot)."""
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# --- how a fit is spread ---------------------------------------------------------------------


def test_a_plain_process_spawns_its_workers(alone, tmp_path):
    trainer, _ = make_trainer(out_dir=tmp_path, epochs=1, trainer_kwargs=DDP_KWARGS, has_val=True)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert isinstance(trainer.strategy.launcher, _SpawnLauncher)
    assert trainer.world_size == 2


def test_ranks_started_by_a_launcher_are_used_as_they_are(alone, tmp_path):
    alone.setenv("LOCAL_RANK", "0")
    alone.setenv("WORLD_SIZE", "2")
    trainer, _ = make_trainer(out_dir=tmp_path, epochs=1, trainer_kwargs=DDP_KWARGS, has_val=True)
    assert isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    assert launched_rank() is not None


def test_several_nodes_need_a_launcher(alone, tmp_path):
    kwargs = DDP_KWARGS | {"num_nodes": 2}
    with pytest.raises(UserError, match="num_nodes=2: start the ranks with torchrun or srun"):
        make_trainer(out_dir=tmp_path, epochs=1, trainer_kwargs=kwargs, has_val=True)


def test_launched_rank_reads_torchrun_and_hand_made_environments(alone):
    assert launched_rank() is None
    alone.setenv("TORCHELASTIC_RUN_ID", "x")
    alone.setenv("WORLD_SIZE", "1")
    assert launched_rank() is None  # a single rank is a process alone
    alone.setenv("WORLD_SIZE", "4")
    alone.setenv("LOCAL_RANK", "3")
    rank = launched_rank()
    assert rank is not None and rank.world_size() == 4 and rank.local_rank() == 3


def test_nested_fits_of_launched_ranks_and_pipeline_jobs_use_one_device(alone, tmp_path):
    cfg = OmegaConf.create({"trainer": DDP_KWARGS})
    ctx = RunContext(cfg=cfg, out_dir=tmp_path, data=None, store=None)  # type: ignore[arg-type]
    assert ctx.trainer_kwargs(nested=True) == DDP_KWARGS  # alone: the teacher's fit spawns too
    alone.setenv("LOCAL_RANK", "1")
    alone.setenv("WORLD_SIZE", "2")
    single = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    assert ctx.trainer_kwargs(nested=True) == single
    assert ctx.trainer_kwargs(nested=False) == DDP_KWARGS
    alone.setenv(DEVICE_ENV, "cpu")
    assert ctx.trainer_kwargs(nested=False) == single


def test_one_device_drops_the_ddp_settings():
    kwargs = one_device(DDP_KWARGS | {"precision": "bf16-mixed"}, torch.device("cuda", 3))
    assert kwargs == {
        "accelerator": "cuda",
        "devices": [3],
        "precision": "bf16-mixed",
        "enable_progress_bar": False,
    }


def test_the_recipe_batch_is_the_global_batch():
    datamodule = SplitsDataModule(None, batch_size=128, eval_batch_size=1000)  # type: ignore[arg-type]
    assert per_rank(datamodule, 1) is datamodule
    shard = per_rank(datamodule, 4)
    assert (shard.batch_size, shard.eval_batch_size) == (32, 1000)
    with pytest.raises(UserError, match="batch_size=128 does not split over 3 processes"):
        per_rank(datamodule, 3)


def test_module_pickles_for_spawned_workers_before_and_after_steps():
    """Feature hooks are closures: they live from the first step until the trainer is done."""
    torch.manual_seed(0)
    student = build_model("mlp", num_classes=3, input_shape=(6,), hidden=[8])
    teacher = build_model("mlp", num_classes=3, input_shape=(6,), hidden=[16])
    method = build_method({"name": "fitnet"})
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    data = SimpleNamespace(x_train=x, y_train=y, num_classes=3, name="toy")
    ctx = SimpleNamespace(transform=BatchTransform(is_image=False), data=data)
    prepare_method(ctx, student, method, teacher)  # type: ignore[arg-type]
    module = DistillModule(
        student=student,
        method=method,
        transform=BatchTransform(is_image=False),
        num_classes=3,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        teacher=teacher,
    )
    batch = (x, y, torch.arange(32))
    pickle.loads(pickle.dumps(module))
    module.training_step(batch, 0)
    module.teardown("fit")
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    worker = pickle.loads(pickle.dumps(module))
    assert torch.isfinite(worker.training_step(batch, 0))


# --- end to end: two gloo processes per fit ----------------------------------------------------


class RankProbe(Callback):
    """Saved by every rank at the end of its fit: world size, the student's weights, the sample
    indices of its first epoch's batches and the epoch means of the loss. Pickled into the
    spawned workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.indices: list[torch.Tensor] = []
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 0:
            self.indices.append(batch[2].cpu())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.losses.append(float(pl_module.epoch_means()["loss"]))  # type: ignore[operator]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        student = pl_module.student  # type: ignore[attr-defined]
        torch.save(
            {
                "world_size": trainer.world_size,
                "student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                "indices": self.indices,
                "losses": self.losses,
            },
            self.directory / f"rank{trainer.global_rank}.pt",
        )


@pytest.fixture
def probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every fit of a run gets a RankProbe; fit k of a run writes to probes/<k>-<its dir name>."""
    from hpmkd.engine import context

    root = tmp_path / "probes"
    real_fit = context.fit
    count = itertools.count()

    def fit_with_probe(*args, out_dir: Path, callbacks=(), **kwargs):
        directory = root / f"{next(count)}-{out_dir.name}"
        directory.mkdir(parents=True)
        probe = RankProbe(directory)
        return real_fit(*args, out_dir=out_dir, callbacks=[*callbacks, probe], **kwargs)

    monkeypatch.setattr(context, "fit", fit_with_probe)
    return root


def _ranks(directory: Path) -> tuple[dict, dict]:
    found = sorted(p.name for p in directory.iterdir())
    assert found == ["rank0.pt", "rank1.pt"], directory
    r0, r1 = (torch.load(directory / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    return r0, r1


def _check_ranks_agree(directory: Path, num_train: int) -> dict:
    """DDP kept the ranks in step, each saw its own half of the data; returns rank 0's probe."""
    r0, r1 = _ranks(directory)
    assert r0["student"].keys() == r1["student"].keys()
    for key, value in r0["student"].items():
        assert torch.equal(value, r1["student"][key]), key
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 3  # means over both ranks
    seen0, seen1 = torch.cat(r0["indices"]), torch.cat(r1["indices"])
    assert {len(b) for b in r0["indices"][:-1]} == {64}  # recipe.batch_size=128 over 2 ranks
    assert len(seen0) == len(seen1) == (num_train + 1) // 2  # the sampler pads to equal shares
    assert set(seen0.tolist()) | set(seen1.tolist()) == set(range(num_train))
    assert len(set(seen0.tolist()) & set(seen1.tolist())) == num_train % 2
    return r0


def _student_weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, weights_only=False)
    return {k[8:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("student.")}


def _single_run(run: Callable, run_dir: Path, *args: str) -> dict:
    """``hpmkd train`` into ``run_dir``: one results.json and one deployable student there."""
    result = run("train", *args, f"hydra.run.dir={run_dir}")
    assert result.code == 0, result.err
    assert [p.name for p in run_dir.rglob("results.json")] == ["results.json"]
    assert [p.parent for p in run_dir.rglob("student.pt")] == [run_dir]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs"] == 3
    assert results["test_acc"] > 50  # 10 classes: chance is 10 %
    # the callback states came back from rank 0: per-epoch history as in one process
    assert len(results["val_acc_history"]) == 3 and results["best_epoch"] is not None
    assert len(results["curves"]["loss"]) == 3
    return results


@pytest.mark.slow
def test_plain_run_on_two_processes(run_cli, probes, alone, tmp_path):
    run_dir = tmp_path / "plain"
    results = _single_run(run_cli, run_dir, *DDP_CPU)
    (fit_dir,) = probes.iterdir()
    r0 = _check_ranks_agree(fit_dir, results["data"]["train"])
    # the weights came back to this process: rank 0's last weights were checkpointed, and the
    # deployable student holds the best epoch's weights, as after a fit in one process
    last = _student_weights(run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.equal(last[k], v) for k, v in r0["student"].items())
    best = _student_weights(run_dir / "checkpoints" / "best.ckpt")
    deployed = torch.load(run_dir / "student.pt")
    assert deployed.keys() == best.keys()
    assert all(torch.equal(deployed[k], best[k]) for k in best)


@pytest.mark.slow
def test_kd_then_smskd_with_a_teacher_trained_under_ddp(run_cli, probes, alone, tmp_path):
    kd = _single_run(run_cli, tmp_path / "kd", "+strategy=kd", *DDP_CPU)
    assert kd["teacher"]["extra"]["source"] == "trained"
    assert kd["teacher"]["fit"]["world_size"] == 2  # the nested fit ran on both processes too
    assert kd["teacher"]["test_acc"] > 50
    for probe in probes.iterdir():  # teacher, then student
        _check_ranks_agree(probe, kd["data"]["train"])
    smskd = _single_run(run_cli, tmp_path / "smskd", "+strategy=smskd", *DDP_CPU)
    assert smskd["teacher"]["extra"]["source"] == "store"
    (rates,) = smskd["details"]["forgetting_pct"]  # computed by rank 0 at the end of its fit
    assert 0 <= rates <= 100
    assert len(smskd["curves"]["stage"]) == 3
    assert len(list(probes.iterdir())) == 3
    smskd_fit = next(p for p in probes.iterdir() if p.name.startswith("2-"))
    _check_ranks_agree(smskd_fit, smskd["data"]["train"])


@pytest.mark.slow
def test_multirun_members_spawn_their_own_ranks(run_cli, alone):
    """The Hydra/DDP trap: nothing re-executes the command line, so no stray runs or sweeps."""
    run = run_cli("train", "-m", "seed=0,1", *DDP_CPU)
    assert run.code == 0, run.err
    results = run.results()
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert all(r["status"] == "completed" and r["test_acc"] > 50 for r in results)
    assert [p.name for p in run.outputs.iterdir()] == ["multirun"]  # no single-run dirs
    (sweep,) = (run.outputs / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for member in ("0", "1"):
        assert (sweep / member / "results.json").is_file()
        assert (sweep / member / "student.pt").is_file()


@pytest.mark.slow
def test_ranks_started_by_torchrun_share_one_run(tmp_path):
    """torchrun starts both ranks, which run the whole run: the one holding the store lock trains
    the teacher alone on its device while the other waits and reuses it; then both train the
    student together."""
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCHER_ENV, "MASTER_PORT")}
    env |= {"HPMKD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "kd"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*launch, "-m", "hpmkd.cli", "train", "+strategy=kd", *DDP_CPU]
    done = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_acc"] > 50 and len(results["val_acc_history"]) == 3
    assert results["teacher"]["fit"]["world_size"] == 1
    metas = [json.loads(m.read_text()) for m in (tmp_path / "cache" / "store").rglob("meta.json")]
    assert [m["role"] for m in metas].count("teacher") == 1  # trained once
    assert (run_dir / "student.pt").is_file()
    assert results["world_size"] == 2
    # rank 0 writes for both: one history row, one results file
    assert len((tmp_path / "cache" / "store" / "history.jsonl").read_text().splitlines()) == 1
