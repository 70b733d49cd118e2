"""Batch-wise augmentation and normalisation, run on the device that holds the batch.

Images stay uint8 until here: random crop (zero padding) and horizontal flip move whole batches
with one gather, then a single fused scale-and-shift turns them into normalised floats. No
per-image Python work happens in the training loop.

Each augmented sample also gets a view id: the crop offsets and the flip bit in one integer.
The sample index and the view id determine the augmented image exactly, which is what makes a
cache of teacher outputs exact (``engine/teacher_cache.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits


class BatchTransform:
    """``transform(x, train)``: augment (training only) and normalise a batch.

    For images, ``x`` is uint8 NCHW and the output is ``(x / 255 - mean) / std`` in float32.
    Tabular batches (``is_image=False``) are already standardised and pass through.
    """

    def __init__(
        self,
        *,
        is_image: bool,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        flip: bool = False,
    ) -> None:
        self.is_image = is_image
        self.crop_padding = int(crop_padding) if is_image else 0
        self.flip = bool(flip) and is_image
        self.mean = list(mean) if mean is not None else [0.0]
        self.std = list(std) if std is not None else [1.0]
        self._zeros: dict[tuple[int, torch.device], Tensor] = {}
        if is_image:
            mean_t = torch.tensor(self.mean, dtype=torch.float32)
            std_t = torch.tensor(self.std, dtype=torch.float32)
            self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
            self._shift = (mean_t / std_t).view(1, -1, 1, 1)

    @property
    def spec(self) -> dict[str, Any]:
        """Everything that determines the output for a given input and view (for cache keys)."""
        return {
            "is_image": self.is_image,
            "mean": self.mean if self.is_image else None,
            "std": self.std if self.is_image else None,
            "crop_padding": self.crop_padding,
            "flip": self.flip,
        }

    @property
    def views(self) -> int:
        """How many distinct training views a sample has (1 without random augmentation; 162 for
        CIFAR's pad-4 crop and flip)."""
        side = 2 * self.crop_padding + 1
        return side * side * (2 if self.flip else 1)

    def __call__(self, x: Tensor, train: bool) -> Tensor:
        return self.augment(x)[0] if train else self.normalise(x)

    def augment(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The training batch and each sample's view id in ``range(self.views)``.

        With crop offsets ``dy, dx`` in ``[0, 2p]`` and the flip bit ``f``, the view id is
        ``(dy * (2p + 1) + dx) * 2 + f`` (no crop: ``f``; no flip: without ``* 2 + f``; neither:
        0). The random draws are those of plain augmentation, so asking for the view changes
        nothing about the batch.
        """
        if not self.is_image:
            return x, self._single_view(len(x), x.device)
        view = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if self.crop_padding:
            dy, dx = crop_offsets(len(x), self.crop_padding, x.device)
            x = crop(x, self.crop_padding, dy, dx)
            view = dy * (2 * self.crop_padding + 1) + dx
        if self.flip:
            flipped = flip_draws(len(x), x.device)
            x = flip_where(x, flipped)
            view = view * 2 + flipped.long()
        return self.normalise(x), view

    def _single_view(self, n: int, device: torch.device) -> Tensor:
        """View ids of a batch without augmentation (all 0), made once per batch size."""
        key = (n, device)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(n, dtype=torch.long, device=device)
        return self._zeros[key]

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 images to normalised float32; tabular batches unchanged."""
        if not self.is_image:
            return x
        if self._scale.device != x.device:
            self._scale = self._scale.to(x.device)
            self._shift = self._shift.to(x.device)
        return torch.addcmul(-self._shift, x.float(), self._scale)


def crop_offsets(
    n: int, padding: int, device: torch.device, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Per-sample crop offsets ``(dy, dx)``, each uniform in ``[0, 2 * padding]``."""
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    return dy, dx


def crop(x: Tensor, padding: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Each sample's window at offsets ``(dy, dx)`` of the zero-padded batch, at its original size
    (one gather for the whole batch)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def flip_draws(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample flip bits, each true with probability 1/2."""
    return torch.rand(n, device=device, generator=generator) < 0.5


def flip_where(x: Tensor, flipped: Tensor) -> Tensor:
    """The batch with the samples marked in ``flipped`` mirrored horizontally."""
    return torch.where(flipped[:, None, None, None], x.flip(3), x)


def batch_transform(data: DataSplits | StreamSplits, augment: bool) -> BatchTransform:
    """The device-side transform for ``data`` (``DataSplits`` or ``StreamSplits``).

    In-memory images are augmented here (``data.augment``, when ``augment``); streamed images
    were augmented in the loader's workers, so for them this only normalises.
    """
    streamed = isinstance(data, StreamSplits)
    options = dict(data.augment) if augment and not streamed else {}
    return BatchTransform(is_image=data.is_image, mean=data.mean, std=data.std, **options)
