"""CIFAR-10 and CIFAR-100 through torchvision (official 50k train / 10k test)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits

from ._common import label_tensor
from ._images import image_splits
from ._torchvision import open_torchvision

_SETS = {
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py/",
        {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
    ),
    "cifar100": (
        "CIFAR100",
        "cifar-100-python/",
        {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]},
    ),
}


@register_source("cifar10", "cifar100")
def load(cfg: Mapping) -> DataSplits:
    """CIFAR-10/100 (picked by ``cfg.name``) as uint8 3x32x32 images; val carved from train."""
    class_name, local_copy, stats = _SETS[str(cfg["name"])]
    train, test = open_torchvision(cfg, class_name, local_copy)

    def images(dataset) -> torch.Tensor:  # torchvision holds them decoded, NHWC uint8
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()

    return image_splits(
        cfg,
        images(train),
        label_tensor(train.targets),
        list(train.classes),
        x_test=images(test),
        y_test=label_tensor(test.targets),
        normalize=stats,
        augment={"crop_padding": 4, "flip": True},
    )
