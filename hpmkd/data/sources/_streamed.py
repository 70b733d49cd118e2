"""``StreamSplits`` from a folder's train and test images: validation carved from train, then
``ready_stream_splits`` (pipelines checked, input shape and normalisation measured)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch.utils.data import Dataset

from hpmkd.data.stream import StreamSplits
from hpmkd.data.stream_loader import configured_workers
from hpmkd.errors import UserError

from ._common import configured_splits, option
from ._files import FileImages
from ._ready_streams import ready_stream_splits


def stream_splits(
    cfg: Mapping,
    *,
    name: str,
    train: FileImages,
    test: Dataset,
    class_names: list[str],
    identity: dict,
    transforms: dict | None = None,
) -> StreamSplits:
    """The val split is ``data.val_fraction`` of train (stratified, ``data.split_seed``);
    ``transforms`` (default: ``data.transforms``) must build; ``data.normalize`` null mean/std
    are estimated on training images through the eval pipeline (logged)."""
    configured_workers(option(cfg, "workers"), 1, 1)  # refused here, before any training
    parts = configured_splits(cfg, np.asarray(train.labels), official_test=True)
    if not len(parts["train"]):
        raise UserError(f"data '{name}' has no training images left after the val split")
    carved = {
        "val_fraction": option(cfg, "val_fraction", 0.1),
        "split_seed": option(cfg, "split_seed", 0),
    }
    splits = {
        "train": train.subset(parts["train"]),
        "val": train.subset(parts["val"]),
        "test": test,
    }
    return ready_stream_splits(
        cfg, splits, class_names, identity=identity | carved, name=name, transforms=transforms
    )
