"""Datasets as in-memory train/val/test tensors: ``load_data(cfg)`` picks a source by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError, unknown_name

__all__ = ["DATA_SOURCES", "DataSplits", "list_datasets", "load_data"]


def _lazy(module: str) -> Callable[[Mapping], DataSplits]:
    """``hpmkd.data.sources.<module>.load``, imported on the first call."""

    def load(cfg: Mapping) -> DataSplits:
        return importlib.import_module(f"hpmkd.data.sources.{module}").load(cfg)

    return load


DATA_SOURCES: dict[str, Callable[[Mapping], DataSplits]] = {
    "digits": _lazy("digits"),
    "breast_cancer": _lazy("breast_cancer"),
    "cifar10": _lazy("cifar"),
    "cifar100": _lazy("cifar"),
    "fashion_mnist": _lazy("fashion_mnist"),
    "image_folder": _lazy("image_folder"),
    "csv": _lazy("csv_table"),
    "adult": _lazy("openml"),
    "credit_g": _lazy("openml"),
    "wine_quality": _lazy("openml"),
}


def list_datasets() -> list[str]:
    """Names ``load_data`` accepts as ``cfg.name``, sorted."""
    return sorted(DATA_SOURCES)


def load_data(cfg: Mapping) -> DataSplits:
    """Load the dataset ``cfg.name`` with the options in ``cfg`` (a DictConfig or a dict).

    Raises UserError for an unknown name, missing files or failed downloads, before any training.
    """
    name = cfg.get("name")
    if name is None:
        raise UserError(f"data.name is not set; valid: {', '.join(list_datasets())}")
    if name not in DATA_SOURCES:
        raise unknown_name("dataset", str(name), list_datasets())
    return DATA_SOURCES[name](cfg)
