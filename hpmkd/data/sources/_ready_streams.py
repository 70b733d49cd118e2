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
from ._images import channel_stats, configured_stats

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


def decoded_splits(
    cfg: Mapping,
    name: str,
    x: Mapping[str, torch.Tensor],
    labels: Mapping[str, np.ndarray],
    class_names: list[str],
) -> DataSplits:
    """In-memory splits of decoded uint8 NCHW images (``stack_images``) and their labels, with
    ``data.normalize`` (else computed on the training split, logged) and ``data.augment``."""
    mean, std = configured_stats(
        cfg,
        x["train"].shape[1],
        lambda: channel_stats(x["train"]),
        describe=(name, "computed on the training split"),
    )
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
    train = splits["train"]
    first = eval_pipeline(train[0][0])
    seed = int(option(cfg, "split_seed", 0))
    mean, std = configured_stats(
        cfg,
        first.shape[0],
        lambda: sample_stats(train, eval_pipeline, STATS_SAMPLE, seed),
        describe=(
            name,
            f"estimated on {min(STATS_SAMPLE, len(train))} of {len(train)} training images",
        ),
    )
    return StreamSplits(
        name=name,
        train=train,
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
