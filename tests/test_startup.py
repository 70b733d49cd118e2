"""Start-up: the CLI answers --help, --cfg and config errors without importing torch; the
model table the config groups are generated from equals the model registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpmkd import config

HEAVY = ("torch", "lightning", "torchvision", "sklearn")

# runs `hpmkd <args>`, then reports the heavy modules imported on the way (also after sys.exit)
_PROBE = """
import atexit, json, sys
atexit.register(lambda: print("IMPORTED=" + json.dumps(
    sorted(m for m in {heavy} if m in sys.modules)), file=sys.stderr))
from hpmkd.cli import main
main(sys.argv[1:])
"""


def _heavy_imports(tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    env = {"HPMKD_CACHE": str(tmp_path / "cache"), "HPMKD_OUTPUTS": str(tmp_path / "out")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    marker = [line for line in proc.stderr.splitlines() if line.startswith("IMPORTED=")]
    assert marker, proc.stderr
    return proc.returncode, json.loads(marker[-1].removeprefix("IMPORTED=")), proc.stderr


def test_importing_the_cli_imports_no_torch() -> None:
    code = f"import sys, hpmkd.cli; print(sorted(m for m in sys.modules if m in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["train", "--help"], 0, ""),
        (["train", "+strategy=kd", "student=resnet20", "--cfg", "job"], 0, ""),
        (["train", "recipe.epochs=-1"], 2, "recipe.epochs must be a positive number"),
        (["train", "student=nope"], 2, "unknown student 'nope'"),
        (["train", "+recipe.epoch=3"], 2, "unknown key 'recipe.epoch'"),
        (["train", "optimized_metric=nope"], 2, "unknown optimized_metric 'nope'"),
        (["--version"], 0, ""),
    ],
)
def test_answers_without_the_training_stack(
    tmp_path: Path, args: list[str], code: int, fragment: str
) -> None:
    returncode, imported, err = _heavy_imports(tmp_path, *args)
    assert returncode == code, err
    assert fragment in err
    assert imported == []


def test_model_table_matches_the_registry() -> None:
    live = json.loads(json.dumps(config.registry_model_table()))
    assert config.model_table() == live, (
        "hpmkd/model_table.json is out of date: run `uv run python scripts/model_table.py`"
    )


def test_generated_groups_offer_every_model_with_its_defaults() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    config.setup()
    table = config.model_table()
    with initialize_config_dir(str(config.config_dir()), version_base="1.3"):
        for name in ("resnet20", "wrn_40_2", "wrn_10_8", "mlp_large"):
            cfg = compose("train", [f"teacher={name}", f"student={name}", f"+assistant={name}"])
            for group in config.MODEL_GROUPS:
                assert cfg[group].arch == name
                assert OmegaConf.to_container(cfg[group].params) == table[name]
            assert cfg.teacher.seed is None and cfg.student.target_ratio is None
