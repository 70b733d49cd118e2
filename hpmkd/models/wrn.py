"""Wide ResNets ``wrn_D_W`` (Zagoruyko & Komodakis 2016): depth D = 6n+4, widening factor W.

Pre-activation blocks: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus a shortcut (identity, or a
1x1 conv on the activated input where the shape changes). Stages have 16W/32W/64W channels and
strides 1, 2, 2; a final BN-ReLU precedes global pooling. Any ``wrn_D_W`` name is accepted.

Modules: ``conv1`` -> ``layer1..3`` -> ``bn`` -> ``final_act`` -> ``pool`` -> ``linear``.

Features. A pre-activation net has no activation at the end of a stage; the BN-ReLU that opens
the next block plays that role:

- ``stem_pre``: output of ``conv1``; ``stem``: it after the first block's BN-ReLU.
- ``stageK_pre``: the raw (un-normalised) output of stage K; ``stageK``: it after the next BN-ReLU
  (the first block of stage K+1, or the final BN-ReLU for the last stage); ``stageK_bn``: it
  after that BN, before the ReLU.
- ``pool``: input of ``linear``.

The CRD benchmark (RepDistiller's ``wrn.py``) feeds its feature losses the RAW outputs: its
``feat`` list is ``[stem_pre, stage1_pre, stage2_pre, stage3_pre, pool]``, not the post-BN-ReLU
``stem``/``stages`` that hpmkd's methods take by default; its ``preact`` list (AB) is
``[stem_pre, stage1_bn, stage2_bn, stage3_bn, pool]``. ``benchmark_features`` holds both, for
the ``feat[...]``/``preact[...]`` aliases (``hpmkd.models.features``) that ``fidelity=repdistiller``
(the ``experiment=crd_cifar100/*`` presets) selects.
"""

import re
from functools import partial

import torch
from torch import nn

from hpmkd.errors import UserError

from .common import FeaturePoints, check_dropout, conv1x1, conv3x3, init_weights
from .features import BenchmarkFeatures
from .registry import ModelSpec, register_model, register_pattern


class PreActBlock(nn.Module):
    """Wide pre-activation block; ``act1`` (hookable) activates the block input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = nn.ReLU()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.shortcut = None if stride == 1 and in_ch == out_ch else conv1x1(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.dropout(self.act2(self.bn2(self.conv1(activated))))
        return self.conv2(out) + residual


class WideResNet(nn.Module):
    """WRN-depth-width for small images."""

    def __init__(
        self, depth: int, width: int, dropout: float, in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        self.conv1 = conv3x3(in_channels, 16)
        in_ch = 16
        for index, stride in enumerate((1, 2, 2), 1):
            out_ch = 16 * width * 2 ** (index - 1)
            layer = nn.Sequential(
                *(
                    PreActBlock(
                        in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dropout
                    )
                    for i in range(blocks)
                )
            )
            self.add_module(f"layer{index}", layer)
            in_ch = out_ch
        self.bn = nn.BatchNorm2d(in_ch)
        self.final_act = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(in_ch, num_classes)
        init_weights(self)
        self.feature_points: FeaturePoints = {
            "stem": ("layer1.0.act1", "output"),
            "stem_pre": ("conv1", "output"),
            "stage1": ("layer2.0.act1", "output"),
            "stage1_bn": ("layer2.0.bn1", "output"),
            "stage1_pre": ("layer1", "output"),
            "stage2": ("layer3.0.act1", "output"),
            "stage2_bn": ("layer3.0.bn1", "output"),
            "stage2_pre": ("layer2", "output"),
            "stage3": ("final_act", "output"),
            "stage3_bn": ("bn", "output"),
            "stage3_pre": ("layer3", "output"),
            "pool": ("linear", "input"),
        }
        self.benchmark_features: BenchmarkFeatures = {
            "feat": ("stem_pre", "stage1_pre", "stage2_pre", "stage3_pre", "pool"),
            "preact": ("stem_pre", "stage1_bn", "stage2_bn", "stage3_bn", "pool"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.linear(self.pool(self.final_act(self.bn(x))))


def _build(
    depth: int, width: int, *, num_classes: int, input_shape: tuple[int, ...], dropout: float
) -> WideResNet:
    rate = check_dropout(f"wrn_{depth}_{width}", dropout)
    return WideResNet(depth, width, rate, input_shape[0], num_classes)


def _spec_for(match: re.Match[str]) -> ModelSpec:
    name, depth, width = match.group(0), int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6 or width < 1:
        raise UserError(
            f"model '{name}' is not a valid wide ResNet: wrn_D_W needs depth D = 6n+4 >= 10 "
            "(10, 16, 22, 28, 34, 40, ...) and width W >= 1"
        )
    return ModelSpec(name, "wrn", {"dropout": 0.0}, True, partial(_build, depth, width))


register_pattern(r"wrn_(\d+)_(\d+)", _spec_for)
for _depth, _width in ((16, 1), (16, 2), (40, 1), (40, 2), (28, 10)):
    register_model(f"wrn_{_depth}_{_width}", "wrn", dropout=0.0)(partial(_build, _depth, _width))
