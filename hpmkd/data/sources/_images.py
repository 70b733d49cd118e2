"""Turn uint8 NCHW image tensors into DataSplits: split, normalisation stats, augmentation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError

from ._common import configured_splits, option

log = logging.getLogger("hpmkd")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NCHW images, in [0, 1] units.

    Exact, from a 256-bin histogram per channel, so it needs no float copy of the data.
    """
    if len(images) == 0:
        raise UserError("cannot compute normalisation statistics of an empty training split")
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        counts /= counts.sum()
        mean = float((counts * levels).sum())
        var = float((counts * levels**2).sum()) - mean**2
        means.append(mean)
        stds.append(max(var, 0.0) ** 0.5)
    return tuple(means), tuple(stds)


def configured_stats(
    cfg: Mapping,
    channels: int,
    estimate: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]],
    *,
    default: dict | None = None,
    describe: tuple[str, str] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``normalize.mean/std`` from ``cfg`` (else ``default``), one value per channel; ``estimate()``
    when either is null, logged as ``data '<name>': normalisation <how>`` with ``describe``."""
    normalize = option(cfg, "normalize", default or {}) or {}
    mean, std = normalize.get("mean"), normalize.get("std")
    if mean is None or std is None:
        mean, std = estimate()
        if describe is not None:
            log.info(
                "data '%s': normalisation %s: mean %s std %s", *describe,
                [round(v, 4) for v in mean], [round(v, 4) for v in std],
            )  # fmt: skip
    if len(mean) != channels or len(std) != channels:
        raise UserError(
            f"data.normalize needs {channels} mean and std values for {channels}-channel images, "
            f"got mean={list(mean)} std={list(std)}"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def image_splits(
    cfg: Mapping,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: list[str],
    *,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    name: str | None = None,
    normalize: dict | None = None,
    augment: dict | None = None,
) -> DataSplits:
    """Build DataSplits from uint8 NCHW images and int64 labels.

    Without an official test split (``x_test`` None) a stratified ``test_fraction`` (default 0.2)
    is carved first. Reads ``val_fraction`` (default 0.1), ``split_seed`` (0), ``normalize``
    (``{mean, std}`` in [0, 1] units; default: the ``normalize`` argument, else computed on the
    training split) and ``augment`` (default: the ``augment`` argument, else none) from ``cfg``.
    """
    parts = configured_splits(cfg, y.numpy(), official_test=x_test is not None)
    parts = {split: torch.from_numpy(rows) for split, rows in parts.items()}
    if x_test is None:
        x_test, y_test = x[parts["test"]], y[parts["test"]]
    x_train, x_val = x[parts["train"]], x[parts["val"]]
    mean, std = configured_stats(
        cfg, x_train.shape[1], lambda: channel_stats(x_train), default=normalize
    )
    return DataSplits(
        name=name or str(cfg["name"]),
        x_train=x_train,
        y_train=y[parts["train"]],
        x_val=x_val,
        y_val=y[parts["val"]],
        x_test=x_test,
        y_test=y_test,
        num_classes=len(class_names),
        class_names=list(class_names),
        input_shape=tuple(x.shape[1:]),
        is_image=True,
        mean=mean,
        std=std,
        augment=dict(option(cfg, "augment", augment or {})),
    )
