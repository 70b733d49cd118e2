"""VGG with BatchNorm for small images, as used in CIFAR distillation benchmarks.

Five groups of conv3x3(bias)-BN-ReLU units (64, 128, 256, 512, 512 channels); a 2x2 max-pool
(ceil mode, so inputs down to 1x1 work) follows groups 1-3 and, depending on ``pool4``, group 4;
global average pooling follows group 5, and a single linear layer on the 512 features
classifies. ``vgg8`` has one conv per group; vgg11/13/16/19 follow the classic configurations
A/B/D/E.

``pool4`` (model parameter): ``auto`` (default) is the CRD benchmark's CIFAR VGG (RepDistiller's
``vgg.py``), which skips the fourth max-pool for 32x32 inputs, so groups 4 and 5 both run at 4x4
there (it pools for 64x64 inputs; ``auto`` pools for every input larger than 32x32). ``true``
always pools after group 4 (group 5 at 2x2 on CIFAR): hpmkd's VGG before this switch existed,
so VGG checkpoints trained by hpmkd until then need ``params.pool4=true`` (the weights are the
same, and load either way; only the forward differs). ``false`` never pools there.

Modules: ``stage1`` -> ``maxpool1`` -> ... -> ``stage5`` -> ``pool`` -> ``classifier``
(``maxpool4`` is an identity when it does not pool).
Features: ``stage1..5``/``stage1..5_pre`` (the last unit's ``out_act``, before max-pooling) and
``pool``; VGG has no separate stem. The benchmark's lists (``benchmark_features``) are ``feat``
= ``[stage1..5, pool]`` and ``preact`` (AB) = ``[stage1, stage2..5_pre, pool]``, so its
``feat[1:-1]`` (AT, NST, VID, AB) leaves out the first group.
"""

from functools import partial

import torch
from torch import nn

from hpmkd.errors import UserError

from .common import FeaturePoints, activation_points, init_weights
from .features import BenchmarkFeatures
from .registry import register_model

_WIDTHS = (64, 128, 256, 512, 512)
_CONVS_PER_GROUP = {
    8: (1, 1, 1, 1, 1),
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


class ConvUnit(nn.Module):
    """conv3x3 (with bias) -> BN -> ``out_act`` (hookable ReLU)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.bn(self.conv(x)))


class VGG(nn.Module):
    """VGG-BN; `convs` gives the number of conv units in each of the five groups."""

    def __init__(
        self, convs: tuple[int, ...], in_channels: int, num_classes: int, pool4: bool = True
    ) -> None:
        super().__init__()
        self.feature_points: FeaturePoints = {}
        in_ch = in_channels
        for index, (count, width) in enumerate(zip(convs, _WIDTHS, strict=True), 1):
            units = [ConvUnit(in_ch if i == 0 else width, width) for i in range(count)]
            self.add_module(f"stage{index}", nn.Sequential(*units))
            if index < len(_WIDTHS):
                pools = index < 4 or pool4
                maxpool = nn.MaxPool2d(2, ceil_mode=True) if pools else nn.Identity()
                self.add_module(f"maxpool{index}", maxpool)
            self.feature_points |= activation_points(
                f"stage{index}", f"stage{index}.{count - 1}.out_act"
            )
            in_ch = width
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(in_ch, num_classes)
        self.feature_points["pool"] = ("classifier", "input")
        stages = tuple(f"stage{i}" for i in range(1, len(_WIDTHS) + 1))
        self.benchmark_features: BenchmarkFeatures = {
            "feat": (*stages, "pool"),
            "preact": (stages[0], *(f"{s}_pre" for s in stages[1:]), "pool"),
        }
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(1, len(_WIDTHS)):
            x = getattr(self, f"maxpool{index}")(getattr(self, f"stage{index}")(x))
        return self.classifier(self.pool(self.stage5(x)))


def _pool4(name: str, pool4: object, height: int) -> bool:
    if pool4 == "auto":
        return height > 32
    if not isinstance(pool4, bool):
        raise UserError(f"model '{name}' needs pool4 = auto, true or false; got {pool4!r}")
    return pool4


def _build(depth: int, *, num_classes: int, input_shape: tuple[int, ...], pool4: object) -> VGG:
    pools = _pool4(f"vgg{depth}", pool4, input_shape[1])
    return VGG(_CONVS_PER_GROUP[depth], input_shape[0], num_classes, pools)


for _depth in _CONVS_PER_GROUP:
    register_model(f"vgg{_depth}", "vgg", pool4="auto")(partial(_build, _depth))
