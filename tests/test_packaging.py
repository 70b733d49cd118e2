"""What a user installs: a license, classifiers, a lean core with optional extras, and one line
naming the extra when a feature needs one that is missing."""

from __future__ import annotations

import importlib.util
from importlib.metadata import metadata
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpmkd import config
from hpmkd.errors import UserError
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
META = metadata("hpmkd")  # as installed from pyproject.toml


def test_license_file_and_classifiers() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert META.get_all("License-File") == ["LICENSE"]
    classifiers = META.get_all("Classifier")
    assert "License :: OSI Approved :: MIT License" in classifiers
    versions = {c.rsplit(":: ", 1)[-1] for c in classifiers if "Python :: 3." in c}
    assert versions == {"3.10", "3.11", "3.12", "3.13"}  # requires-python >=3.10,<3.14


def test_loggers_and_the_sweeper_are_extras_not_core() -> None:
    requires = META.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.startswith(("wandb", "tensorboard", "hydra-optuna"))]
    for package, extra in (
        ("wandb", "wandb"), ("tensorboard", "tensorboard"), ("hydra-optuna-sweeper", "optuna"),
    ):  # fmt: skip
        assert any(r.startswith(package) and f"extra == '{extra}'" in r for r in requires)


@pytest.mark.parametrize(
    ("logger", "missing", "extra"),
    [
        ("wandb", {"wandb"}, "wandb"),
        ("tensorboard", {"tensorboard", "tensorboardX"}, "tensorboard"),
        ("many", {"tensorboard", "tensorboardX"}, "tensorboard"),
    ],
)
def test_a_logger_without_its_extra_is_one_line(
    run_cli, monkeypatch: pytest.MonkeyPatch, logger: str, missing: set[str], extra: str
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name)
    )
    run = run_cli("train", f"logger={logger}", *TINY)
    assert run.code == 2
    assert run.err.strip().splitlines() == [
        f"hpmkd: error: logger '{logger if logger != 'many' else 'tensorboard'}' needs hpmkd's "
        f"optional extra '{extra}': pip install \"hpmkd[{extra}]\" (in a checkout: uv sync "
        f"--extra {extra})"
    ]
    assert run.results() == []


def test_tensorboard_x_is_enough_for_the_tensorboard_logger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    present = {"tensorboardX": object(), "tensorboard": None}
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: present.get(name, find_spec(name))
    )
    node = OmegaConf.create({"tb": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}})
    config.check_logger_packages(node)  # no error
    present["tensorboardX"] = None
    with pytest.raises(UserError, match="optional extra 'tensorboard'"):
        config.check_logger_packages(node)
