"""The resolved config as hyperparameters: in every logger and every checkpoint, and a student
loaded back from a checkpoint with one call."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import hpmkd
from hpmkd.api import load_student
from hpmkd.errors import UserError
from tests.conftest import TINY


def _train(run_cli, run_dir: Path, *args: str) -> None:
    run = run_cli("train", *TINY, f"hydra.run.dir={run_dir}", "recipe.epochs=2", *args)
    assert run.code == 0, run.err


def test_csv_hparams_hold_the_config_of_the_run_and_of_its_teacher(run_cli, tmp_path: Path):
    run_dir = tmp_path / "run"
    _train(run_cli, run_dir, "+strategy=kd", "seed=7")
    student = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert student["seed"] == 7 and student["recipe"]["epochs"] == 2
    assert student["method"]["name"] == "kd" and student["fit"]["unit"] == "student"
    teacher = yaml.safe_load((run_dir / "teacher" / "csv" / "hparams.yaml").read_text())
    assert teacher["fit"]["unit"] == "teacher" and teacher["teacher"] == student["teacher"]


def test_tensorboard_hparams_hold_the_resolved_config(run_cli, tmp_path: Path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    _train(run_cli, run_dir, "logger=tensorboard", "seed=3")
    hparams = yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["seed"] == 3 and hparams["recipe"]["name"] == "smoke"
    assert hparams["student"]["arch"] == "mlp_small"
    assert hparams["paths"]["output_dir"] == str(run_dir)  # resolved, not ${hydra:...}


def _wandb_config(run_dir: Path) -> dict:
    """The config of the one wandb offline run under ``run_dir``: its ``files/config.yaml`` where
    this wandb version writes one, else the config records of its transaction log (``.wandb``:
    a LevelDB-style log of protobuf records in 32 KiB blocks, after a 7-byte header)."""
    (offline,) = run_dir.glob("wandb/offline-run-*")
    written = offline / "files" / "config.yaml"
    if written.is_file():
        return {k: v["value"] for k, v in yaml.safe_load(written.read_text()).items()}
    from wandb.proto import wandb_internal_pb2

    (log_file,) = offline.glob("*.wandb")
    raw, pos, part, config = log_file.read_bytes(), 7, b"", {}
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        part, pos = part + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            kind_name = record.WhichOneof("record_type")
            node = {"config": record.config, "run": record.run.config}.get(kind_name)
            for item in node.update if node is not None else ():
                config[item.key] = json.loads(item.value_json)
    return config


def test_a_wandb_offline_run_config_holds_the_resolved_config(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    _train(run_cli, run_dir, "logger=wandb", "seed=5")
    config = _wandb_config(run_dir)
    assert config["seed"] == 5 and config["recipe"]["epochs"] == 2
    assert config["student"]["arch"] == "mlp_small" and config["fit"]["unit"] == "student"


QUICK = ["recipe=smoke", "recipe.epochs=2", "trainer.accelerator=cpu"]
QUICK += ["trainer.enable_progress_bar=false"]


def test_a_student_loads_back_from_its_checkpoint_and_predicts_as_trained(tmp_path: Path):
    result = hpmkd.distill("mlp_large", "mlp_small", overrides=QUICK, out_dir=tmp_path / "run")
    x = torch.randn(32, 1, 8, 8)
    for path in (result.out_dir, result.out_dir / "checkpoints" / "best.ckpt"):
        student = load_student(path)
        assert not student.training
        assert torch.equal(student(x), result.student(x))


def test_a_student_given_as_a_module_loads_into_a_module_of_its_architecture(tmp_path: Path):
    def mlp() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    result = hpmkd.distill("mlp_large", mlp(), overrides=QUICK, out_dir=tmp_path / "run")
    with pytest.raises(UserError, match="given as an nn.Module; pass model="):
        load_student(result.out_dir)
    x = torch.randn(32, 1, 8, 8)
    assert torch.equal(load_student(result.out_dir, model=mlp())(x), result.student(x))


def test_a_file_that_is_no_hpmkd_checkpoint_is_one_line(tmp_path: Path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="holds no hpmkd hyperparameters"):
        load_student(tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_student(tmp_path / "nothing")
