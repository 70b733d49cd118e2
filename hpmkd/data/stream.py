"""Datasets too large to hold in memory: ``StreamSplits`` and the in-memory vs streaming switch.

A source returns ``StreamSplits`` (Datasets of ``(image, label)``, decoded and transformed in
DataLoader workers by ``stream_loader.StreamDataModule``) instead of ``DataSplits`` when its
decoded training split would not fit comfortably in memory, or when ``data.stream=true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from hpmkd.errors import UserError

log = logging.getLogger("hpmkd")

DEFAULT_STREAM_ABOVE_MB = 2048
STREAM_CHOICES = ("auto", "true", "false")


@dataclass
class StreamSplits:
    """A dataset read from storage batch by batch.

    Item ``i`` of each split is ``(image, label)``: the image a ``PIL.Image`` or a uint8 CHW
    tensor, the label an int. ``transforms`` is the ``data.transforms`` node (``train`` and
    ``eval`` torchvision.transforms.v2 pipelines written in YAML) and ``input_shape`` the shape of
    one sample after the eval transform. ``identity`` (JSON-able) names the data for the store,
    e.g. a digest of the file list with sizes, or a Hugging Face dataset fingerprint.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]
    identity: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transforms: dict
    input_shape: tuple[int, ...]
    is_image: bool = True
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """sha256 of the identity, class count, split sizes, normalisation and transforms.

        Never reads the images. Unlike ``DataSplits`` (whose tensors are the model's input) the
        transforms are part of it: they decide the resolution and content the model sees.
        """
        if self._fingerprint is None:
            blob = {
                "identity": self.identity,
                "num_classes": self.num_classes,
                "sizes": [len(self.train), len(self.val), len(self.test)],
                "mean": list(self.mean),
                "std": list(self.std),
                "transforms": self.transforms,
            }
            text = json.dumps(blob, sort_keys=True, default=str)
            self._fingerprint = hashlib.sha256(f"stream|{text}".encode()).hexdigest()
        return self._fingerprint

    def summary(self) -> dict:
        """Name, split sizes, number of classes and per-sample input shape, for logs."""
        return {
            "name": self.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }


def stream_choice(cfg: Mapping) -> str:
    """``data.stream`` as ``auto``, ``true`` or ``false`` (UserError for anything else)."""
    value = cfg.get("stream", "auto")
    text = str(value).lower() if isinstance(value, bool | str) else repr(value)
    if text not in STREAM_CHOICES:
        raise UserError(f"data.stream must be auto, true or false, got {value!r}")
    return text


def should_stream(cfg: Mapping, n_images: int, image_shape: Sequence[int]) -> bool:
    """Whether the source should stream, logging which path was chosen and why.

    ``auto`` streams when the decoded training split (``n_images`` uint8 images of
    ``image_shape``, CxHxW) would exceed ``data.stream_above_mb`` (default 2048).
    """
    choice = stream_choice(cfg)
    name = cfg.get("name")
    if choice != "auto":
        stream = choice == "true"
        log.info("data '%s': %s (data.stream=%s)", name, _path(stream), choice)
        return stream
    limit = cfg.get("stream_above_mb", DEFAULT_STREAM_ABOVE_MB)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
        raise UserError(f"data.stream_above_mb must be a number >= 0, got {limit!r}")
    megabytes = n_images * math.prod(int(v) for v in image_shape) / 2**20
    stream = megabytes > limit
    log.info(
        "data '%s': %s (data.stream=auto: %d images of %s decode to %.0f MB, %s "
        "data.stream_above_mb=%s)",
        name,
        _path(stream),
        n_images,
        "x".join(str(int(v)) for v in image_shape),
        megabytes,
        "above" if stream else "within",
        limit,
    )
    return stream


def _path(stream: bool) -> str:
    return "streaming from storage" if stream else "decoded into memory"


def is_stream(data: Any) -> bool:
    """Whether ``data`` is a ``StreamSplits`` (rather than in-memory ``DataSplits``)."""
    return isinstance(data, StreamSplits)
