"""Data sources by name: each source module registers its loader with ``@register_source``.

Importing every source costs seconds (torchvision, pandas, scikit-learn), so discovery imports
only the module ``SOURCE_TABLE`` names for the requested source; a test keeps the table equal to
what the decorators register.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping

from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits
from hpmkd.errors import unknown_name

Loader = Callable[[Mapping], DataSplits | StreamSplits]

SOURCES_PACKAGE = "hpmkd.data.sources"

# source name -> its module under hpmkd.data.sources
SOURCE_TABLE: dict[str, str] = {
    "digits": "digits",
    "breast_cancer": "breast_cancer",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "fashion_mnist": "fashion_mnist",
    "image_folder": "image_folder",
    "hf": "hf_datasets",
    "torchvision": "torchvision_dataset",
    "imagenet": "imagenet",
    "tiny_imagenet": "imagenet",
    "csv": "csv_table",
    "adult": "openml",
    "credit_g": "openml",
    "wine_quality": "openml",
}

_LOADERS: dict[str, Loader] = {}


def register_source(*names: str) -> Callable[[Loader], Loader]:
    """Decorator registering a ``load(cfg) -> DataSplits`` under each of ``names``."""

    def decorator(load: Loader) -> Loader:
        for name in names:
            if name in _LOADERS and _LOADERS[name] is not load:
                raise ValueError(f"data source '{name}' is registered twice")
            _LOADERS[name] = load
        return load

    return decorator


def source_loader(name: str) -> Loader:
    """The loader registered as ``name``, importing only its module (UserError if unknown)."""
    if name not in SOURCE_TABLE:
        raise unknown_name("dataset", name, list(SOURCE_TABLE))
    if name not in _LOADERS:
        importlib.import_module(f"{SOURCES_PACKAGE}.{SOURCE_TABLE[name]}")
    return _LOADERS[name]


def registered_sources() -> dict[str, str]:
    """Every source the decorators register -> its module (imports every source module)."""
    package = importlib.import_module(SOURCES_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{SOURCES_PACKAGE}.{info.name}")
    return {name: load.__module__.rpartition(".")[2] for name, load in _LOADERS.items()}
