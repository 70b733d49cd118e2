"""scikit-learn's embedded 8x8 handwritten digits, as 1x8x8 uint8 images (offline)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.datasets import load_digits

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits

from ._common import label_tensor
from ._images import image_splits


@register_source("digits")
def load(cfg: Mapping) -> DataSplits:
    """Digits: 1,797 images; pixel levels 0..16 rescaled to 0..255 so that, like every image set,
    they are normalised as ``(x / 255 - mean) / std``. Stats default to the training split's."""
    bunch = load_digits()
    pixels = (bunch.images.astype(np.int64) * 255 // 16).astype(np.uint8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    class_names = [str(c) for c in bunch.target_names]
    return image_splits(cfg, images, label_tensor(bunch.target), class_names)
