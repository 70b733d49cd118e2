"""CIFAR ResNets of depth 6n+2 (He et al. 2016) built from BasicBlocks.

- ``resnet{8,14,20,32,44,56,110}``: stem 16, stages 16/32/64, option-B shortcuts (1x1 conv with
  stride + BatchNorm where the shape changes), as in the CRD benchmark zoo.
- ``resnet8x4``, ``resnet32x4``: stem 32, stages 64/128/256, option-B shortcuts.
- ``resnet{8,...,110}_a``: option-A shortcuts (parameter-free: subsample and zero-pad channels);
  the module names match the public pretrained CIFAR-10 checkpoints, so they load strictly.
- Any depth 6n+2 by pattern: ``resnet{D}`` and ``resnet{D}_a``, and ``resnet{D}w{K}`` with every
  width multiplied by K (option B), the ladder progressive distillation and compression-ratio
  scans pick from (``hpmkd.models.family``).

Modules: ``conv1`` -> ``bn1`` -> ``stem_act`` -> ``layer1..3`` -> ``pool`` -> ``linear``.
Features: ``stem``/``stem_pre``, ``stage1..3``/``stage1..3_pre`` (the last block's ``out_act``),
``pool`` (input of ``linear``). The CRD benchmark's (RepDistiller's ``resnet.py``) feature
lists are the same points: ``feat`` = ``[stem, stage1..3, pool]``, ``preact`` (AB) =
``[stem, stage1..3_pre, pool]`` (``benchmark_features``, for the ``feat[...]`` aliases).
"""

import re
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hpmkd.errors import UserError

from .common import FeaturePoints, activation_points, conv1x1, conv3x3, init_weights
from .features import BenchmarkFeatures
from .registry import ModelSpec, register_model, register_pattern

Shortcut = Literal["A", "B"]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially with the stride, zero-pad the new channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_ch - in_ch) // 2
        self.pad_back = out_ch - in_ch - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ``out_act`` (hookable ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module
        if stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_ch, out_ch, stride)
        else:
            self.shortcut = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.out_act(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with three stages of n BasicBlocks; strides 1, 2, 2."""

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        shortcut: Shortcut,
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        blocks = (depth - 2) // 6
        stem, *stage_widths = widths
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.stem_act = nn.ReLU()
        in_ch = stem
        for index, (width, stride) in enumerate(zip(stage_widths, (1, 2, 2), strict=True), 1):
            layer = nn.Sequential(
                *(
                    BasicBlock(in_ch if i == 0 else width, width, stride if i == 0 else 1, shortcut)
                    for i in range(blocks)
                )
            )
            self.add_module(f"layer{index}", layer)
            in_ch = width
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(in_ch, num_classes)
        init_weights(self)
        self.feature_points: FeaturePoints = {
            **activation_points("stem", "stem_act"),
            **activation_points("stage1", f"layer1.{blocks - 1}.out_act"),
            **activation_points("stage2", f"layer2.{blocks - 1}.out_act"),
            **activation_points("stage3", f"layer3.{blocks - 1}.out_act"),
            "pool": ("linear", "input"),
        }
        self.benchmark_features: BenchmarkFeatures = {
            "feat": ("stem", "stage1", "stage2", "stage3", "pool"),
            "preact": ("stem", "stage1_pre", "stage2_pre", "stage3_pre", "pool"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(x))


def _build(
    depth: int,
    widths: tuple[int, int, int, int],
    shortcut: Shortcut,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
) -> CifarResNet:
    return CifarResNet(depth, widths, shortcut, input_shape[0], num_classes)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", "resnet_cifar")(partial(_build, _depth, _NARROW, "B"))
    register_model(f"resnet{_depth}_a", "resnet_cifar")(partial(_build, _depth, _NARROW, "A"))
for _depth in (8, 32):
    register_model(f"resnet{_depth}x4", "resnet_cifar")(partial(_build, _depth, _WIDE, "B"))


def _spec_for(match: re.Match[str]) -> ModelSpec:
    name, depth = match.group(0), int(match.group(1))
    shortcut: Shortcut = "A" if match.group(2) else "B"
    multiplier = int(match.group(3) or 1)
    if depth < 8 or (depth - 2) % 6 or multiplier < 1:
        raise UserError(
            f"model '{name}' is not a valid CIFAR ResNet: depth must be 6n+2 >= 8 "
            "(8, 14, 20, 26, 32, ...) and a width multiplier wK needs K >= 1"
        )
    widths = tuple(w * multiplier for w in _NARROW)
    builder = partial(_build, depth, widths, shortcut)
    return ModelSpec(name, "resnet_cifar", {}, True, builder)  # type: ignore[arg-type]


register_pattern(r"resnet(\d+)(?:(_a)|w(\d+))?", _spec_for)
