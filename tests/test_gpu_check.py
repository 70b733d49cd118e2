"""scripts/gpu_check.sh: one line and exit 0 without a GPU; every command it runs composes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from hpmkd import config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for torch, even on a GPU machine
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "gpu_check: no CUDA GPU visible to torch here; nothing checked"
    ]


def test_print_commands_lists_every_check_and_runs_nothing():
    done = subprocess.run(
        ["bash", str(SCRIPT), "--print-commands"], capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert len(lines) == len(CHECKS) >= 9
    assert all(line.startswith("hpmkd train ") for line in lines)


CHECKS = _module().CHECKS


def _single_run(args: list[str]) -> list[str]:
    """A multirun's overrides as one run: no -m, each sweep (a,b,c outside brackets) -> a."""
    out = []
    for arg in args:
        if arg == "-m":
            continue
        key, _, value = arg.partition("=")
        if not value.startswith(("[", "{")) and re.fullmatch(r"[^,]+(,[^,]+)+", value):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_every_command_composes_and_validates(check, monkeypatch):
    # validated as on a machine with one GPU, which is where the script runs them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config.setup()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=_single_run(check.args), return_hydra_config=True)
    config.validate(cfg)
    assert cfg.recipe.name == "smoke" and cfg.recipe.epochs == 2
    if "trainer=ddp" in check.args:
        assert cfg.trainer.strategy.process_group_backend == "nccl"
    else:
        assert cfg.trainer.accelerator == "gpu"
    if check.multirun:
        assert cfg.hydra.launcher.devices == ["cuda:0"] * 3
