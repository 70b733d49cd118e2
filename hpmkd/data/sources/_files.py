"""Image files on disk as a Dataset for streaming: a compact file list, decoded on access.

The only per-image state is the relative path (one numpy bytes array) and the label (int32):
forked DataLoader workers read them without touching Python object reference counts, so their
memory stays shared with the parent, and nothing grows with the dataset but the list itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from hpmkd.errors import UserError

from ._common import one_line

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class FileImages(Dataset):
    """Item ``i``: ``(uint8 CHW image, label)`` decoded from ``root / paths[i]`` by torchvision.io
    (RGB, or one channel with ``grey``)."""

    def __init__(
        self, root: str | Path, paths: np.ndarray, labels: np.ndarray, *, grey: bool = False
    ) -> None:
        self.root = str(root)
        self.paths = paths
        self.labels = labels
        self.grey = grey

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path = os.path.join(self.root, self.paths[i].decode())
        mode = ImageReadMode.GRAY if self.grey else ImageReadMode.RGB
        try:
            image = decode_image(read_file(path), mode=mode)
        except RuntimeError as err:
            raise UserError(f"cannot decode image {path}: {one_line(err)}") from None
        return image, int(self.labels[i])

    def subset(self, rows: np.ndarray) -> FileImages:
        """The images at ``rows``, as a FileImages of its own."""
        return FileImages(self.root, self.paths[rows], self.labels[rows], grey=self.grey)


def image_files(folder: Path) -> list[os.DirEntry]:
    """The jpg/png files directly in ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        found = [
            e for e in entries if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        ]
    return sorted(found, key=lambda e: e.name)


class FileList:
    """(path relative to a root, label) pairs, and a digest of the paths, labels and sizes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []
        self.labels: list[int] = []
        self._digest = hashlib.sha256()

    def add(self, entries: Sequence[os.DirEntry | Path], label: int) -> None:
        for entry in entries:
            rel = os.path.relpath(os.fspath(entry), self.root)
            self.paths.append(rel)
            self.labels.append(label)
            self._digest.update(f"{rel}|{label}|{entry.stat().st_size}\n".encode())

    def digest(self) -> str:
        return self._digest.hexdigest()

    def dataset(self, *, grey: bool = False) -> FileImages:
        if not self.paths:
            raise UserError(f"no jpg/png images found under '{self.root}'")
        paths = np.array([p.encode() for p in self.paths], dtype=np.bytes_)
        return FileImages(self.root, paths, np.array(self.labels, dtype=np.int32), grey=grey)


def sample_stats(
    dataset: Dataset, pipeline: object, n: int = 256, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of ``n`` images drawn with ``seed``, through
    ``pipeline`` (an estimate: streamed data is never read whole)."""
    from ._images import channel_stats

    rows = np.random.default_rng(seed).permutation(len(dataset))[:n]
    images = [pipeline(dataset[int(i)][0]) for i in rows]
    flat = torch.cat([x.reshape(x.shape[0], 1, -1) for x in images], dim=2)
    return channel_stats(flat.transpose(0, 1).unsqueeze(-1))
