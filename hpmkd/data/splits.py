"""The train/val/test container every data source returns, and the stratified split rules."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from hpmkd.errors import UserError


@dataclass
class DataSplits:
    """A dataset held in memory as three tensor splits.

    Image sets keep ``x`` as uint8 NCHW; they are normalised later, on the device, as
    ``(x / 255 - mean) / std`` per channel. Tabular sets keep ``x`` as standardised float32.
    Labels are int64 in ``0..num_classes-1``. The validation split may have zero rows.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str]
    input_shape: tuple[int, ...]
    is_image: bool
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: dict = field(default_factory=dict)
    # tabular sets: how raw rows became ``x`` (hpmkd.data.sources._tabular.table_contract), so a
    # deployed student can take raw rows; None for images and for data given as tensors
    table_transform: dict | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """Content address of the data: sha256 over every split's dtype, shape and bytes.

        The name, normalisation and augmentation settings are not part of it, so two sources that
        yield the same tensors share one fingerprint.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        digest = hashlib.sha256(f"num_classes={self.num_classes}".encode())
        for split in ("train", "val", "test"):
            for tensor in (getattr(self, f"x_{split}"), getattr(self, f"y_{split}")):
                array = tensor.detach().cpu().contiguous().numpy()
                digest.update(f"|{split}:{array.dtype}:{tuple(array.shape)}|".encode())
                if array.size:  # an empty split (val_fraction 0) has no bytes to view
                    digest.update(memoryview(array).cast("B"))
        self._fingerprint = digest.hexdigest()  # splits are never modified after loading
        return self._fingerprint

    def summary(self) -> dict:
        """Name, split sizes, number of classes and per-sample input shape, for logs."""
        return {
            "name": self.name,
            "train": len(self.y_train),
            "val": len(self.y_val),
            "test": len(self.y_test),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (kept, held out), holding out ``fraction`` stratified by label.

    ``what`` names the split for error messages (``"val"``, ``"test"``). Both index arrays are
    sorted; a fraction of 0 holds out nothing.
    """
    if not 0 <= fraction < 1:
        raise UserError(f"data.{what}_fraction must be in [0, 1), got {fraction}")
    indices = np.arange(len(labels))
    if fraction == 0:
        return indices, indices[:0]
    # Imported here: sklearn.model_selection pulls in scipy, which DataSplits users do not need.
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(
            indices, test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:
        raise UserError(f"cannot carve a stratified {what} split of {fraction}: {err}") from None
    return np.sort(kept), np.sort(held)


def split_indices(
    labels: np.ndarray, *, val_fraction: float, seed: int, test_fraction: float | None = None
) -> dict[str, np.ndarray]:
    """Index arrays for ``train`` and ``val`` and, when ``test_fraction`` is given, ``test``.

    The test split (only for data without an official one) is carved first from all rows; the
    validation split is then ``val_fraction`` of the remaining training rows. Both are stratified
    by label and use the same ``seed``.
    """
    labels = np.asarray(labels)
    pool = np.arange(len(labels))
    out: dict[str, np.ndarray] = {}
    if test_fraction is not None:
        if test_fraction == 0:
            raise UserError(
                "data.test_fraction must be in (0, 1), got 0: the run would have no test split"
            )
        pool, out["test"] = stratified_holdout(labels, test_fraction, seed, "test")
    kept, held = stratified_holdout(labels[pool], val_fraction, seed, "val")
    out["train"], out["val"] = pool[kept], pool[held]
    return out
