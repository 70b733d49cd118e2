"""Splits from a library's own datasets (``hf``, ``torchvision``): decoded images stacked, their
normalisation, and StreamSplits from three ready Datasets (transforms checked, shape measured)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits
from hpmkd.data.stream_transforms import pipelines
from hpmkd.errors import UserError

from ._common import label_tensor, option
from ._files import sample_stats
from ._images import channel_stats

log = logging.getLogger("hpmkd")

# training images (after the eval transform) the normalisation statistics are estimated on
STATS_SAMPLE = 256


def stack_images(decoded: Mapping[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """Each split's HxW (grey) or HxWx3 uint8 arrays as one uint8 NCHW tensor; one size over
    every split (else a UserError naming data.resize and data.stream), grey made RGB when any
    image has colour."""
    every = [a for arrays in decoded.values() for a in arrays]
    sizes = sorted({a.shape[:2] for a in every})
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for h, w in sizes[:3])
        raise UserError(
            f"images come in {len(sizes)} sizes (e.g. {examples} WxH); set data.resize=[H,W] to "
            "decode them at one size, or data.stream=true to stream them through data.transforms"
        )
    colour = any(a.ndim == 3 for a in every)
    out = {}
    for split, arrays in decoded.items():
        if not arrays:  # an empty split (val_fraction 0)
            out[split] = torch.zeros((0, 3 if colour else 1, *sizes[0]), dtype=torch.uint8)
            continue
        arrays = [a if a.ndim == 3 else a[:, :, None] for a in arrays]
        if colour:
            arrays = [a if a.shape[2] == 3 else np.repeat(a, 3, axis=2) for a in arrays]
        out[split] = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return out


def normalisation(
    cfg: Mapping, x_train: torch.Tensor, name: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.normalize`` when it gives mean and std, else computed on the uint8 NCHW training
    split (logged)."""
    normalize = option(cfg, "normalize", {}) or {}
    mean, std = normalize.get("mean"), normalize.get("std")
    if mean is None or std is None:
        mean, std = channel_stats(x_train)
        log.info(
            "data '%s': normalisation computed on the training split: mean %s std %s",
            name,
            [round(v, 4) for v in mean],
            [round(v, 4) for v in std],
        )
    if len(mean) != x_train.shape[1] or len(std) != x_train.shape[1]:
        raise UserError(
            f"data.normalize needs {x_train.shape[1]} mean and std values, got mean={list(mean)} "
            f"std={list(std)}"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def decoded_splits(
    cfg: Mapping,
    name: str,
    x: Mapping[str, torch.Tensor],
    labels: Mapping[str, np.ndarray],
    class_names: list[str],
) -> DataSplits:
    """In-memory splits of decoded uint8 NCHW images (``stack_images``) and their labels, with
    ``normalisation`` and ``data.augment``."""
    mean, std = normalisation(cfg, x["train"], name)
    return DataSplits(
        name=name,
        **{f"x_{split}": x[split] for split in ("train", "val", "test")},
        **{f"y_{split}": label_tensor(labels[split]) for split in ("train", "val", "test")},
        num_classes=len(class_names),
        class_names=class_names,
        input_shape=tuple(x["train"].shape[1:]),
        is_image=True,
        mean=mean,
        std=std,
        augment=dict(option(cfg, "augment", {}) or {}),
    )


def ready_stream_splits(
    cfg: Mapping,
    splits: Mapping[str, Dataset],
    class_names: list[str],
    *,
    identity: dict,
    name: str,
    transforms: Mapping | None = None,
) -> StreamSplits:
    """StreamSplits over ``splits`` (``train``/``val``/``test``) with ``transforms`` (default:
    ``data.transforms``); ``data.normalize`` mean/std, or both estimated on training images
    (logged)."""
    if transforms is None:
        transforms = option(cfg, "transforms", {})
    transforms = dict(transforms or {})
    eval_pipeline = pipelines(transforms)["eval"]
    first = eval_pipeline(splits["train"][0][0])
    normalize = option(cfg, "normalize", {}) or {}
    mean, std = normalize.get("mean"), normalize.get("std")
    if mean is None or std is None:
        seed = int(option(cfg, "split_seed", 0))
        mean, std = sample_stats(splits["train"], eval_pipeline, STATS_SAMPLE, seed)
        log.info(
            "data '%s': normalisation estimated on %d of %d training images: mean %s std %s",
            name,
            min(STATS_SAMPLE, len(splits["train"])),
            len(splits["train"]),
            [round(v, 4) for v in mean],
            [round(v, 4) for v in std],
        )
    if len(mean) != first.shape[0] or len(std) != first.shape[0]:
        raise UserError(
            f"data.normalize needs {first.shape[0]} mean and std values for {first.shape[0]}-"
            f"channel images, got mean={list(mean)} std={list(std)}"
        )
    return StreamSplits(
        name=name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=len(class_names),
        class_names=list(class_names),
        identity=identity,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        transforms=transforms,
        input_shape=tuple(first.shape),
    )
