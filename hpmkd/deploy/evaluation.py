"""A deployed model judged on the run's own data: the test split as raw inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from hpmkd.data import DataSplits, load_data
from hpmkd.deploy.wrapper import raw_inputs
from hpmkd.errors import UserError
from hpmkd.results import RESULTS_FILE


def run_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no {RESULTS_FILE}: not a finished hpmkd run directory")
    return json.loads(path.read_text())


def run_data(results: dict[str, Any]) -> DataSplits:
    """The run's data, loaded again from its recorded config; it must be the very data the run
    saw (same fingerprint)."""
    data = load_data(OmegaConf.create(results["config"]["data"]))
    if data.fingerprint() != results["data"]["fingerprint"]:
        raise UserError(
            f"data '{data.name}' loads differently now than when the run trained on it "
            "(another fingerprint): accuracies would not be comparable"
        )
    return data


def split_inputs(contract: dict[str, Any], data: DataSplits, split: str) -> torch.Tensor:
    """A split as the deployed model takes it: uint8 images, or raw (unscaled) table rows."""
    return raw_inputs(contract, getattr(data, f"x_{split}"))


def accuracy(
    predict: Callable[[torch.Tensor], np.ndarray | torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int = 256,
) -> float:
    """Top-1 accuracy in percent of ``predict`` (raw batch -> probabilities)."""
    correct = 0
    for start in range(0, len(y), batch):
        probs = predict(x[start : start + batch])
        predicted = np.asarray(probs).argmax(axis=1)
        correct += int((predicted == y[start : start + batch].numpy()).sum())
    return 100.0 * correct / max(len(y), 1)
