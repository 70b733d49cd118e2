"""Building blocks shared by the model families: convolutions, initialisation, feature points."""

import torch
from torch import nn

from hpmkd.errors import UserError

FeaturePoints = dict[str, tuple[str, str]]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, groups=groups, bias=False)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, ReLU gain), zero conv biases, BatchNorm = identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def activation_points(name: str, act_path: str) -> FeaturePoints:
    """Feature `name` at the output of activation module `act_path`, `name_pre` at its input."""
    return {name: (act_path, "output"), f"{name}_pre": (act_path, "input")}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` equal channel groups (ShuffleNet)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def check_dropout(model_name: str, dropout: object) -> float:
    """`dropout` as a float in [0, 1); UserError naming the model otherwise."""
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(f"model '{model_name}' needs 0 <= dropout < 1; got {dropout!r}")
    return float(dropout)
