"""The student with its input contract baked in: raw inputs in, class probabilities out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpmkd.deploy.contract import STUDENT_FILE, read_contract
from hpmkd.engine.model_config import GIVEN_PREFIX
from hpmkd.errors import UserError
from hpmkd.models import build_model


class Deployable(nn.Module):
    """``model`` behind its input preprocessing, with a softmax on top.

    Images: uint8 NCHW -> ``(x / 255 - mean) / std``. Tables: raw rows (numeric columns, then
    the one-hot columns of categorical ones) -> a missing numeric value becomes the training
    median, then ``(x - mean) / scale``; the one-hot columns pass through.
    """

    def __init__(self, model: nn.Module, contract: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(contract["class_names"])
        spec = contract["input"]
        self.is_image = spec["kind"] == "image"
        if self.is_image:
            mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(spec["std"], dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", mean / std)
            self.numeric = 0
        else:
            table = spec.get("transform") or {"median": [], "mean": [], "scale": []}
            self.numeric = len(table["mean"])
            self.register_buffer("median", torch.tensor(table["median"], dtype=torch.float32))
            self.register_buffer("mean", torch.tensor(table["mean"], dtype=torch.float32))
            self.register_buffer("inv_scale", 1.0 / torch.tensor(table["scale"]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_image:
            x = x.float() * self.scale - self.shift
        elif self.numeric:
            raw, rest = x[:, : self.numeric], x[:, self.numeric :]
            raw = torch.where(torch.isnan(raw), self.median, raw)
            x = torch.cat([(raw - self.mean) * self.inv_scale, rest], dim=1)
        return torch.softmax(self.model(x), dim=1)


def load_model(spec: dict[str, Any], weights: Path | None) -> nn.Module:
    """The architecture a contract (or a teacher record) names, with ``weights`` if given."""
    if str(spec["arch"]).startswith(GIVEN_PREFIX):
        raise UserError(
            f"the model '{spec['arch']}' was given as an nn.Module to the Python API; hpmkd "
            "cannot rebuild it (export the module yourself)"
        )
    model = build_model(
        spec["arch"],
        num_classes=spec["num_classes"],
        input_shape=tuple(spec["input_shape"]),
        **(spec.get("params") or {}),
    )
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def load_deployable(run_dir: Path) -> tuple[Deployable, dict[str, Any]]:
    """The run's student (``student.pt``) wrapped by its contract (``deploy.json``)."""
    contract = read_contract(run_dir)
    model = load_model(contract, run_dir / STUDENT_FILE)
    return Deployable(model, contract).eval(), contract


def raw_inputs(contract: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """Encoded table rows turned back into raw ones (the inverse of the contract): what a user
    would feed the deployed model. Image batches are raw (uint8) already."""
    spec = contract["input"]
    if spec["kind"] == "image" or not (spec.get("transform") or {}).get("mean"):
        return x
    table = spec["transform"]
    n = len(table["mean"])
    mean, scale = torch.tensor(table["mean"]), torch.tensor(table["scale"])
    return torch.cat([x[:, :n] * scale + mean, x[:, n:]], dim=1).float()


def example_inputs(contract: dict[str, Any], rows: int, seed: int = 0) -> torch.Tensor:
    """Raw inputs of the contract's kind: random uint8 images, or table rows around the training
    mean (one scale wide)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, *contract["input_shape"])
    if contract["input"]["kind"] == "image":
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    x = torch.randn(shape, generator=generator)
    table = contract["input"].get("transform") or {}
    if table.get("mean"):
        n = len(table["mean"])
        x[:, :n] = x[:, :n] * torch.tensor(table["scale"]) + torch.tensor(table["mean"])
    return x
