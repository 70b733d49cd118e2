"""The shared pretrained CIFAR-10 ResNet-56 (option A) loads exactly and scores as published.

Needs ../shared/data (the JPEG copy of CIFAR-10 and the pretrained checkpoints); skipped when it
is absent. On the lossy JPEG test images these teachers score 81-83 % (data README).
"""

from __future__ import annotations

import tarfile

import pytest
import torch

from hpmkd.data.augment import BatchTransform
from hpmkd.data.sources.image_folder import load_image_folder_split
from hpmkd.engine.evaluate import accuracy
from hpmkd.models import build_model, load_weights
from tests.conftest import SHARED_DATA

TARBALL = SHARED_DATA / "cifar10-jpeg" / "CIFAR-10-images.tar.gz"
CHECKPOINT = SHARED_DATA / "teachers" / "cifar10-resnet-option-a" / "resnet56-4bfd9763.th"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TARBALL.is_file() and CHECKPOINT.is_file()), reason="../shared/data is absent"
    ),
]


def test_pretrained_resnet56_scores_at_least_80_percent_on_jpeg_test_set(tmp_path):
    with tarfile.open(TARBALL) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("test/")]
        archive.extractall(tmp_path, members=members, filter="data")
    x, y, classes = load_image_folder_split(tmp_path / "test")
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == torch.uint8 and len(classes) == 10

    model = build_model("resnet56_a", num_classes=10, input_shape=(3, 32, 32))
    load_weights(model, str(CHECKPOINT), source=str(CHECKPOINT))
    transform = BatchTransform(is_image=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    acc = accuracy(model, x, y, transform, batch_size=500)
    assert acc is not None and acc >= 80.0, acc
