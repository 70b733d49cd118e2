"""Multi-layer perceptrons for flat (tabular) data; images are flattened.

Each hidden layer is Linear -> (BatchNorm1d) -> ``act`` (hookable ReLU) -> Dropout; the last
layer is the Linear ``classifier``. Modules: ``flatten`` -> ``hidden`` (a Sequential of
``HiddenLayer``) -> ``classifier``. Features: ``hidden1..K`` (after ReLU), ``hidden1..K_pre``
(before it) and ``pool`` (input of ``classifier``, i.e. the last hidden layer after dropout).
"""

import math
from collections.abc import Sequence
from functools import partial
from itertools import pairwise

import torch
from torch import nn

from hpmkd.errors import UserError

from .common import FeaturePoints, activation_points, check_dropout, init_weights
from .registry import register_model


class HiddenLayer(nn.Module):
    """Linear -> optional BatchNorm1d -> ``act`` (ReLU) -> Dropout."""

    def __init__(self, in_features: int, out_features: int, dropout: float, batch_norm: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features) if batch_norm else nn.Identity()
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.bn(self.linear(x))))


class MLP(nn.Module):
    """Flatten, hidden layers of the given widths, linear classifier."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        dropout: float,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        widths = [in_features, *hidden]
        self.hidden = nn.Sequential(
            *(HiddenLayer(a, b, dropout, batch_norm) for a, b in pairwise(widths))
        )
        self.classifier = nn.Linear(widths[-1], num_classes)
        init_weights(self)
        self.feature_points: FeaturePoints = {"pool": ("classifier", "input")}
        for index in range(1, len(hidden) + 1):
            self.feature_points |= activation_points(f"hidden{index}", f"hidden.{index - 1}.act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.flatten(x)))


def _build(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: Sequence[int],
    dropout: float,
    batch_norm: bool,
) -> MLP:
    widths = list(hidden) if isinstance(hidden, Sequence) and not isinstance(hidden, str) else [0]
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise UserError(f"model '{name}' needs hidden = a list of positive integers; got {hidden}")
    if not isinstance(batch_norm, bool):
        raise UserError(f"model '{name}' needs batch_norm = true or false; got {batch_norm!r}")
    return MLP(
        math.prod(input_shape), widths, num_classes, check_dropout(name, dropout), batch_norm
    )


for _name, _defaults in {
    "mlp": {"hidden": [256, 256], "dropout": 0.0, "batch_norm": False},
    "mlp_small": {"hidden": [64, 32], "dropout": 0.0, "batch_norm": False},
    "mlp_large": {"hidden": [256, 512, 256], "dropout": 0.3, "batch_norm": False},
}.items():
    register_model(_name, "mlp", needs_image=False, **_defaults)(partial(_build, _name))
