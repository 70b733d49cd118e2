"""ResNet-50 for small images: bottleneck stages 3-4-6-3, 3x3 stride-1 stem, no max-pool.

Stages have 64/128/256/512 bottleneck widths (x4 output channels) and strides 1, 2, 2, 2; the
stride sits on the 3x3 conv; shortcuts are 1x1 conv + BN where the shape changes.

Modules: ``conv1`` -> ``bn1`` -> ``stem_act`` -> ``layer1..4`` -> ``pool`` -> ``linear``.
Features: ``stem``/``stem_pre``, ``stage1..4``/``stage1..4_pre`` (the last block's
``out_act``), ``pool`` (input of ``linear``).
"""

import torch
from torch import nn

from .common import FeaturePoints, activation_points, conv1x1, conv3x3, init_weights
from .registry import register_model

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride), 1x1 expand, each with BN; shortcut; ``out_act`` (hookable)."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * EXPANSION
        self.body = nn.Sequential(
            conv1x1(in_ch, width),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            conv3x3(width, width, stride),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            conv1x1(width, out_ch),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.body(x) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """ResNet with bottleneck blocks; `blocks` gives the number of blocks of each stage."""

    def __init__(self, blocks: tuple[int, ...], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.stem_act = nn.ReLU()
        self.feature_points: FeaturePoints = activation_points("stem", "stem_act")
        in_ch = 64
        for index, count in enumerate(blocks, 1):
            width, stride = 64 * 2 ** (index - 1), 1 if index == 1 else 2
            layer = [Bottleneck(in_ch, width, stride)]
            layer += [Bottleneck(width * EXPANSION, width, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layer))
            self.feature_points |= activation_points(
                f"stage{index}", f"layer{index}.{count - 1}.out_act"
            )
            in_ch = width * EXPANSION
        self.num_stages = len(blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(in_ch, num_classes)
        self.feature_points["pool"] = ("linear", "input")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.linear(self.pool(x))


@register_model("resnet50", "resnet_bottleneck")
def build_resnet50(*, num_classes: int, input_shape: tuple[int, ...]) -> BottleneckResNet:
    """ResNet-50 (bottlenecks 3-4-6-3) for CIFAR-sized images."""
    return BottleneckResNet((3, 4, 6, 3), input_shape[0], num_classes)
