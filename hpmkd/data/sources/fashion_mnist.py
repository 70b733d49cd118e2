"""Fashion-MNIST through torchvision (official 60k train / 10k test, 1x28x28 grey)."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError
from hpmkd.io import write_atomic

from ._common import label_tensor, one_line
from ._images import image_splits
from ._torchvision import dataset_root, open_torchvision


def _gunzip(archive: Path, target: Path) -> None:
    with gzip.open(archive, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def unpack_local_archives(raw_dir: Path) -> None:
    """Unpack ``*-ubyte.gz`` files placed in ``<root>/FashionMNIST/raw/`` by hand.

    torchvision only unpacks archives whose checksums match the ones it downloads; repackaged
    copies (e.g. from a Linux distribution) hold the same idx files, so they are unpacked here.
    """
    for archive in sorted(raw_dir.glob("*-ubyte.gz")):
        target = archive.with_suffix("")
        if target.exists():
            continue
        try:
            write_atomic(target, partial(_gunzip, archive))
        except (OSError, EOFError) as err:
            raise UserError(f"cannot unpack {archive}: {one_line(err)}") from None


@register_source("fashion_mnist")
def load(cfg: Mapping) -> DataSplits:
    """Fashion-MNIST as uint8 1x28x28 images; val carved from train. A local copy of the four
    idx ``.gz`` files goes in ``<root>/FashionMNIST/raw/``."""
    unpack_local_archives(dataset_root(cfg) / "FashionMNIST" / "raw")
    train, test = open_torchvision(cfg, "FashionMNIST", "FashionMNIST/raw/*-ubyte[.gz]")
    return image_splits(
        cfg,
        train.data.unsqueeze(1).contiguous(),
        label_tensor(train.targets),
        list(train.classes),
        x_test=test.data.unsqueeze(1).contiguous(),
        y_test=label_tensor(test.targets),
        normalize={"mean": [0.2860], "std": [0.3530]},
    )
