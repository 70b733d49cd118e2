"""Open a torchvision dataset's official train and test splits, with one-line user errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpmkd.errors import UserError

from ._common import one_line, option, required


def dataset_root(cfg: Mapping) -> Path:
    """The ``root`` folder torchvision downloads into or reads a local copy from."""
    root = required(cfg, "root", "a folder to download into or holding a local copy")
    return Path(root).expanduser()


def open_torchvision(cfg: Mapping, class_name: str, local_copy: str) -> tuple[Any, Any]:
    """``torchvision.datasets.<class_name>`` train and test sets under ``root``.

    Downloads when ``download`` (default true) and the files are missing. A failed download or,
    with ``download: false``, missing files raise a one-line UserError naming the root and where
    a local copy (``local_copy``, relative to the root) is expected.
    """
    import torchvision.datasets  # slow to import: only for the datasets that need it

    dataset_class = getattr(torchvision.datasets, class_name)
    download = bool(option(cfg, "download", True))
    return tuple(
        open_split(cfg, dataset_class, {"train": t, "download": download}, local_copy)
        for t in (True, False)
    )


def open_split(cfg: Mapping, dataset_class: type, kwargs: dict, local_copy: str) -> Any:
    """``dataset_class(root, **kwargs)``; a failed download or missing files raise the one-line
    UserError of ``open_torchvision``."""
    name, root = cfg["name"], dataset_root(cfg)
    download = bool(kwargs.get("download", False))
    try:
        return dataset_class(str(root), **kwargs)
    except (OSError, RuntimeError) as err:
        if download:
            raise UserError(
                f"could not download {name} into {root}: {one_line(err)}; when offline, pass "
                f"data.root=<folder holding {local_copy}> and data.download=false"
            ) from None
        raise UserError(
            f"{name} not found: no {local_copy} under {root} and data.download is false; pass "
            f"data.root=<folder holding {local_copy}> or set data.download=true"
        ) from None
