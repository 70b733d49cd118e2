"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for small images.

Both use a conv3x3-BN-ReLU stem with stride 1 and no max-pool, three stages whose first unit has
stride 2, global average pooling and a ``classifier``.

- ``shufflenetv1``: 3 groups, stage widths 240/480/960, 4/8/4 units.
- ``shufflenetv2``: width 1.0, stage widths 116/232/464, 4/8/4 units, 1x1 conv to 1024 before
  pooling.

Every unit ends with ``out_act`` (hookable ReLU). In V2 the ReLU that closes the unit's branches
is applied after the concatenation and shuffle: the pass-through half is already non-negative,
so the result is the same as the paper's unit and ``stageK_pre`` is the unit's output before
that ReLU. Features: ``stem``/``stem_pre``, ``stage1..3``/``stage1..3_pre``, ``pool``.
"""

import torch
from torch import nn

from .common import (
    FeaturePoints,
    activation_points,
    channel_shuffle,
    conv1x1,
    conv3x3,
    init_weights,
)
from .registry import register_model


def _bn_relu(ch: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]


class ShuffleV1Unit(nn.Module):
    """Group 1x1 conv, shuffle, depthwise 3x3 (stride), group 1x1 conv; add or concat shortcut.

    `reduce_groups` is 1 for the network's first unit, whose input has too few channels.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, groups: int, reduce_groups: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.reduce_groups = reduce_groups
        branch_ch = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_ch // 4
        self.reduce = nn.Sequential(conv1x1(in_ch, mid, groups=reduce_groups), *_bn_relu(mid))
        self.depthwise = nn.Sequential(conv3x3(mid, mid, stride, groups=mid), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(
            conv1x1(mid, branch_ch, groups=groups), nn.BatchNorm2d(branch_ch)
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.reduce(x), self.reduce_groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 2:
            return self.out_act(torch.cat([out, self.shortcut(x)], 1))
        return self.out_act(out + x)


class ShuffleV2Unit(nn.Module):
    """Basic unit (stride 1, channel split) or down-sampling unit (stride 2, two branches)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        self.branch = nn.Sequential(
            conv1x1(in_ch if stride == 2 else in_ch // 2, half),
            *_bn_relu(half),
            conv3x3(half, half, stride, groups=half),
            nn.BatchNorm2d(half),
            conv1x1(half, half),
            nn.BatchNorm2d(half),
        )
        self.side: nn.Module = nn.Identity()
        if stride == 2:
            self.side = nn.Sequential(
                conv3x3(in_ch, in_ch, stride, groups=in_ch),
                nn.BatchNorm2d(in_ch),
                conv1x1(in_ch, out_ch - half),
                nn.BatchNorm2d(out_ch - half),
            )
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, to_branch = (x, x) if self.stride == 2 else x.chunk(2, dim=1)
        out = torch.cat([self.side(kept), self.branch(to_branch)], 1)
        return self.out_act(channel_shuffle(out, 2))


class ShuffleNet(nn.Module):
    """conv3x3-BN-ReLU stem, three stages of units, `head` (1x1 conv or identity), classifier."""

    def __init__(
        self,
        in_channels: int,
        stem_ch: int,
        stages: list[list[nn.Module]],
        head: nn.Module,
        features: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, stem_ch), nn.BatchNorm2d(stem_ch))
        self.stem_act = nn.ReLU()
        self.feature_points: FeaturePoints = activation_points("stem", "stem_act")
        for index, units in enumerate(stages, 1):
            self.add_module(f"stage{index}", nn.Sequential(*units))
            self.feature_points |= activation_points(
                f"stage{index}", f"stage{index}.{len(units) - 1}.out_act"
            )
        self.head = head
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(features, num_classes)
        self.feature_points["pool"] = ("classifier", "input")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(self.pool(self.head(x)))


_STEM = 24
_UNITS = (4, 8, 4)


@register_model("shufflenetv1", "shufflenet")
def build_shufflenetv1(*, num_classes: int, input_shape: tuple[int, ...]) -> ShuffleNet:
    """ShuffleNet V1 with 3 groups (stage widths 240/480/960)."""
    groups, stages, in_ch = 3, [], _STEM
    for out_ch, count in zip((240, 480, 960), _UNITS, strict=True):
        units = []
        for i in range(count):
            reduce_groups = 1 if in_ch == _STEM else groups
            units.append(ShuffleV1Unit(in_ch, out_ch, 2 if i == 0 else 1, groups, reduce_groups))
            in_ch = out_ch
        stages.append(units)
    return ShuffleNet(input_shape[0], _STEM, stages, nn.Identity(), in_ch, num_classes)


@register_model("shufflenetv2", "shufflenet")
def build_shufflenetv2(*, num_classes: int, input_shape: tuple[int, ...]) -> ShuffleNet:
    """ShuffleNet V2 1.0x (stage widths 116/232/464, 1024 features)."""
    stages, in_ch = [], _STEM
    for out_ch, count in zip((116, 232, 464), _UNITS, strict=True):
        stages.append(
            [
                ShuffleV2Unit(in_ch if i == 0 else out_ch, out_ch, 2 if i == 0 else 1)
                for i in range(count)
            ]
        )
        in_ch = out_ch
    head = nn.Sequential(conv1x1(in_ch, 1024), *_bn_relu(1024))
    return ShuffleNet(input_shape[0], _STEM, stages, head, 1024, num_classes)
