"""Batch-wise augmentation and normalisation, run on the device that holds the batch.

Images stay uint8 until here: random crop (zero padding) and horizontal flip move whole batches
with one gather, then a single fused scale-and-shift turns them into normalised floats. No
per-image Python work happens in the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


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
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        if is_image:
            mean_t = torch.tensor(mean if mean is not None else [0.0], dtype=torch.float32)
            std_t = torch.tensor(std if std is not None else [1.0], dtype=torch.float32)
            self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
            self._shift = (mean_t / std_t).view(1, -1, 1, 1)

    @property
    def deterministic_in_training(self) -> bool:
        """No random augmentation: a sample looks the same in every epoch."""
        return not (self.is_image and (self.crop_padding or self.flip))

    def __call__(self, x: Tensor, train: bool) -> Tensor:
        if not self.is_image:
            return x
        if train:
            if self.crop_padding:
                x = random_crop(x, self.crop_padding)
            if self.flip:
                x = random_flip(x)
        if self._scale.device != x.device:
            self._scale = self._scale.to(x.device)
            self._shift = self._shift.to(x.device)
        return torch.addcmul(-self._shift, x.float(), self._scale)


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random crop of the zero-padded batch back to its original size."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    off_h = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    off_w = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = (off_h[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (off_w[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each sample horizontally with probability 1/2."""
    mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)
