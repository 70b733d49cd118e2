"""Any torchvision classification dataset (``data=torchvision data.name=<class>``): SVHN, STL10,
Food101, CIFAR10, FashionMNIST, ...

How a class names its splits (``train=True/False``, ``split='train'|'test'|...``, or no split at
all) is read from its signature, with a small table for the classes whose split names differ;
its labels from the attribute that holds them. Small sets are decoded into uint8 ``DataSplits``,
large ones (or ``data.stream=true``) streamed as ``StreamSplits`` over the class itself.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits, should_stream
from hpmkd.errors import UserError

from ._common import configured_splits, one_line, option
from ._ready_streams import decoded_splits, ready_stream_splits, stack_images
from ._torchvision import open_split

log = logging.getLogger("hpmkd")

# hpmkd split -> the class's ``split`` argument, where it is not {"train": "train", "test": "test"}
SPLIT_ARGUMENTS: dict[str, dict[str, str]] = {
    "Flowers102": {"train": "train", "val": "val", "test": "test"},
    "DTD": {"train": "train", "val": "val", "test": "test"},
    "FGVCAircraft": {"train": "train", "val": "val", "test": "test"},
    "PCAM": {"train": "train", "val": "val", "test": "test"},
    "CLEVRClassification": {"train": "train", "val": "val", "test": "test"},
    "Country211": {"train": "train", "val": "valid", "test": "test"},
    "OxfordIIITPet": {"train": "trainval", "test": "test"},
    "Imagenette": {"train": "train", "test": "val"},
    "ImageNet": {"train": "train", "test": "val"},
    "Places365": {"train": "train-standard", "test": "val"},
}
# named in the error for an unknown class
EXAMPLES = (
    "CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "EMNIST", "SVHN", "STL10", "USPS",
    "Food101", "Flowers102", "DTD", "OxfordIIITPet", "StanfordCars", "FGVCAircraft", "GTSRB",
    "Country211", "EuroSAT", "Caltech101", "SUN397", "Places365", "Imagenette",
)  # fmt: skip
# attributes torchvision's classes keep their integer labels in
LABEL_ATTRIBUTES = ("targets", "labels", "_labels", "y")
SAMPLE_ATTRIBUTES = ("samples", "_samples")  # lists of (path, label)


def dataset_class(name: str) -> type:
    """``torchvision.datasets.<name>`` (UserError listing some valid ones when there is none)."""
    import torchvision.datasets

    found = getattr(torchvision.datasets, name, None)
    if not (isinstance(found, type) and issubclass(found, torchvision.datasets.VisionDataset)):
        raise UserError(
            f"torchvision.datasets has no dataset class '{name}'; e.g. {', '.join(EXAMPLES)}"
        )
    return found


def split_arguments(cls: type) -> dict[str, dict]:
    """hpmkd split -> the constructor arguments selecting it; a class without splits gives
    ``train`` only (val and test are then carved)."""
    parameters = inspect.signature(cls).parameters
    if "train" in parameters:
        return {"train": {"train": True}, "test": {"train": False}}
    if "split" in parameters:
        table = SPLIT_ARGUMENTS.get(cls.__name__, {"train": "train", "test": "test"})
        return {split: {"split": value} for split, value in table.items()}
    return {"train": {}}


def _open(cfg: Mapping, cls: type) -> dict[str, Dataset]:
    """Each split the class has, opened under ``data.root`` with ``data.kwargs``."""
    accepts = inspect.signature(cls).parameters
    extra = dict(option(cfg, "kwargs", {}) or {})
    if "download" in accepts:
        extra["download"] = bool(option(cfg, "download", True))
    where = f"{cls.__name__} files (as torchvision lays them out)"
    out = {}
    for split, arguments in split_arguments(cls).items():
        try:
            out[split] = open_split(cfg, cls, {**arguments, **extra}, where)
        except (TypeError, ValueError) as err:
            raise UserError(
                f"torchvision.datasets.{cls.__name__}({arguments | extra}): {one_line(err)}"
            ) from None
    return out


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every label of a torchvision dataset, from the attribute holding them when there is one
    (otherwise every sample is read: logged)."""
    for attribute in LABEL_ATTRIBUTES:
        values = getattr(dataset, attribute, None)
        if values is not None and len(values) == len(dataset):
            return np.asarray(values, dtype=np.int64).reshape(-1)
    for attribute in SAMPLE_ATTRIBUTES:
        samples = getattr(dataset, attribute, None)
        if samples is not None and len(samples) == len(dataset):
            return np.asarray([label for _, label in samples], dtype=np.int64)
    log.info("%s keeps no label list: reading every sample for its label", type(dataset).__name__)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def class_names_of(dataset: Dataset, count: int) -> list[str]:
    """The class's own names (``classes``, ``categories``), else ``0..count-1`` (logged)."""
    names = getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
    if names is not None and len(names) >= count:
        return [str(n) for n in names]
    log.info("%s names no classes: they are numbered 0..%d", type(dataset).__name__, count - 1)
    return [str(i) for i in range(count)]


def _carve(cfg: Mapping, opened: dict, labels: dict) -> dict[str, tuple[Dataset, np.ndarray]]:
    """(dataset, labels) per split: the class's own, the missing val/test carved from train."""
    train = opened["train"]
    rule = cfg if "val" not in opened else {**cfg, "val_fraction": 0.0}
    parts = configured_splits(rule, labels["train"], official_test="test" in opened)
    out = {"train": (Subset(train, parts["train"].tolist()), labels["train"][parts["train"]])}
    for split in ("val", "test"):
        if split in opened:
            out[split] = (opened[split], labels[split])
        else:
            out[split] = (Subset(train, parts[split].tolist()), labels["train"][parts[split]])
    return out


def _as_array(image: Any) -> np.ndarray:
    """A PIL image or tensor sample as HxW (grey) or HxWx3 uint8."""
    if isinstance(image, torch.Tensor):
        array = image.numpy()
        return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    grey = image.mode in ("1", "L", "I", "F", "I;16")
    return np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)


def _decode(dataset: Dataset, resize: list | None) -> list[np.ndarray]:
    """Every image of a split as a uint8 array, resized to ``resize`` = [H, W] when given."""
    from PIL import Image

    images = (dataset[i][0] for i in range(len(dataset)))
    if resize is None:
        return [_as_array(image) for image in images]
    size = (resize[1], resize[0])
    return [_as_array(image.resize(size, Image.Resampling.BILINEAR)) for image in images]


@register_source("torchvision")
def load(cfg: Mapping) -> DataSplits | StreamSplits:
    """``torchvision.datasets.<name>`` under ``root`` (downloaded when ``download``); the class's
    own splits, a missing val or test carved with ``val_fraction``/``test_fraction`` and
    ``split_seed``; ``normalize`` given, or computed on the training split (logged)."""
    if option(cfg, "name") is None:
        raise UserError(
            "data=torchvision needs data.name=<a class of torchvision.datasets, e.g. SVHN>"
        )
    name = str(cfg["name"])
    cls = dataset_class(name)
    opened = _open(cfg, cls)
    labels = {split: labels_of(dataset) for split, dataset in opened.items()}
    count = 1 + max(int(y.max()) for y in labels.values() if len(y))
    class_names = class_names_of(opened["train"], count)
    parts = _carve(cfg, opened, labels)
    resize = option(cfg, "resize")
    if resize is not None and len(resize) != 2:
        raise UserError(f"data.resize must be [H, W] or null, got {resize}")
    first = _as_array(parts["train"][0][0][0])
    shape = (1 if first.ndim == 2 else 3, *(resize or first.shape[:2]))
    if should_stream(cfg, len(parts["train"][1]), shape):
        return ready_stream_splits(
            cfg,
            {split: _Labelled(dataset, y) for split, (dataset, y) in parts.items()},
            class_names,
            identity=_identity(cfg, cls, opened),
            name=name,
        )
    x = stack_images({split: _decode(dataset, resize) for split, (dataset, _) in parts.items()})
    labels = {split: y for split, (_, y) in parts.items()}
    return decoded_splits(cfg, name, x, labels, class_names)


class _Labelled(Dataset):
    """A split whose labels are known: item ``i`` is ``(image, labels[i])``."""

    def __init__(self, dataset: Dataset, labels: np.ndarray) -> None:
        self.dataset = dataset
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset[int(index)][0], int(self.labels[index])


def _identity(cfg: Mapping, cls: type, opened: dict) -> dict:
    import torchvision

    return {
        "source": "torchvision",
        "class": cls.__name__,
        "torchvision": torchvision.__version__.split("+")[0],
        "kwargs": option(cfg, "kwargs", {}) or {},
        "sizes": {split: len(dataset) for split, dataset in opened.items()},
        "split": {k: option(cfg, k) for k in ("val_fraction", "test_fraction", "split_seed")},
    }
