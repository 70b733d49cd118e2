"""``StreamSplits`` from train and test Datasets: validation carved from train, pipelines checked,
input shape and (when not configured) normalisation measured on a few images."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from torch.utils.data import Dataset

from hpmkd.data.stream import StreamSplits
from hpmkd.data.stream_loader import configured_workers
from hpmkd.data.stream_transforms import pipelines
from hpmkd.errors import UserError

from ._common import configured_splits, option
from ._files import FileImages, sample_stats

log = logging.getLogger("hpmkd")

STATS_SAMPLE = 256


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
    are estimated on ``STATS_SAMPLE`` training images through the eval pipeline (logged)."""
    configured_workers(option(cfg, "workers"), 1, 1)  # refused here, before any training
    transforms = transforms if transforms is not None else option(cfg, "transforms", {})
    built = pipelines(transforms)
    parts = configured_splits(cfg, np.asarray(train.labels), official_test=True)
    first = built["eval"](train[int(parts["train"][0])][0]) if len(parts["train"]) else None
    if first is None:
        raise UserError(f"data '{name}' has no training images left after the val split")
    normalize = option(cfg, "normalize", {}) or {}
    mean, std = normalize.get("mean"), normalize.get("std")
    if mean is None or std is None:
        mean, std = sample_stats(train, built["eval"], STATS_SAMPLE)
        log.info(
            "data '%s': normalisation estimated on %d training images: mean %s std %s",
            name, min(STATS_SAMPLE, len(train)), _rounded(mean), _rounded(std),
        )  # fmt: skip
    if len(mean) != first.shape[0] or len(std) != first.shape[0]:
        raise UserError(
            f"data.normalize needs {first.shape[0]} mean and std values for {first.shape[0]}-"
            f"channel images, got mean={list(mean)} std={list(std)}"
        )
    return StreamSplits(
        name=name,
        train=train.subset(parts["train"]),
        val=train.subset(parts["val"]),
        test=test,
        num_classes=len(class_names),
        class_names=list(class_names),
        identity=identity
        | {
            "val_fraction": option(cfg, "val_fraction", 0.1),
            "split_seed": option(cfg, "split_seed", 0),
        },  # fmt: skip
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        transforms=transforms,
        input_shape=tuple(first.shape),
    )


def _rounded(values: tuple[float, ...]) -> list[float]:
    return [round(v, 4) for v in values]
