"""MobileNetV2 (Sandler et al. 2018) for small images, as the CIFAR distillation benchmarks use it.

Stem conv3x3 stride 2 -> inverted-residual bottlenecks (expansion t, channels c * width_mult,
repeats n, first stride s) with settings (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1)
(6,160,3,2) (6,320,1,1) -> 1x1 conv to 1280 channels (1280 * width_mult when width_mult > 1)
-> global average pooling -> ``classifier``. Every bottleneck has its 1x1 expansion conv (also
for t = 1). ``width_mult`` defaults to 0.5, the MobileNetV2 student of the CRD benchmark.

The bottlenecks are grouped into ``stage1..4`` by resolution (a new stage starts at each
stride-2 setting). Features: ``stem``/``stem_pre``; ``stage1..4`` are the stage outputs, which
are LINEAR bottleneck outputs (no activation, so values can be negative and there is no
``stageK_pre``); ``pool`` (input of ``classifier``).
"""

import torch
from torch import nn

from hpmkd.errors import UserError

from .common import FeaturePoints, activation_points, conv1x1, conv3x3, init_weights
from .registry import register_model

_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu(conv: nn.Conv2d) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, depthwise 3x3-BN-ReLU, 1x1 project-BN; residual when shapes agree."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(
            *_conv_bn_relu(conv1x1(in_ch, hidden)),
            *_conv_bn_relu(conv3x3(hidden, hidden, stride, groups=hidden)),
            conv1x1(hidden, out_ch),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with stride-2 stem and the CIFAR stride pattern (total stride 16)."""

    def __init__(self, width_mult: float, in_channels: int, num_classes: int) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.stem = nn.Sequential(conv3x3(in_channels, in_ch, stride=2), nn.BatchNorm2d(in_ch))
        self.stem_act = nn.ReLU()
        stages: list[list[nn.Module]] = []
        for expansion, channels, repeats, stride in _SETTINGS:
            out_ch = int(channels * width_mult)
            if stride == 2 or not stages:
                stages.append([])
            for i in range(repeats):
                stages[-1].append(
                    InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion)
                )
                in_ch = out_ch
        for index, blocks in enumerate(stages, 1):
            self.add_module(f"stage{index}", nn.Sequential(*blocks))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = nn.Sequential(*_conv_bn_relu(conv1x1(in_ch, last)))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)
        self.feature_points: FeaturePoints = {
            **activation_points("stem", "stem_act"),
            **{f"stage{k}": (f"stage{k}", "output") for k in range(1, len(stages) + 1)},
            "pool": ("classifier", "input"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.classifier(self.pool(self.head(x)))


@register_model("mobilenetv2", "mobilenetv2", width_mult=0.5)
def build_mobilenetv2(
    *, num_classes: int, input_shape: tuple[int, ...], width_mult: float
) -> MobileNetV2:
    """MobileNetV2 scaled by `width_mult` (channels are truncated to integers)."""
    if not width_mult > 0 or int(16 * width_mult) < 1:
        raise UserError(f"model 'mobilenetv2' needs width_mult >= 0.0625; got {width_mult}")
    return MobileNetV2(width_mult, input_shape[0], num_classes)
