"""Datasets as in-memory train/val/test tensors: ``load_data(cfg)`` picks a source by name."""

from __future__ import annotations

from collections.abc import Mapping

from hpmkd.data.registry import SOURCE_TABLE, register_source, source_loader
from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError

__all__ = ["DataSplits", "list_datasets", "load_data", "register_source"]


def list_datasets() -> list[str]:
    """Names ``load_data`` accepts as ``cfg.name``, sorted."""
    return sorted(SOURCE_TABLE)


def load_data(cfg: Mapping) -> DataSplits:
    """Load the dataset ``cfg.name`` with the options in ``cfg`` (a DictConfig or a dict).

    Raises UserError for an unknown name, missing files or failed downloads, before any training.
    Sources whose ``name`` names the data itself (``hf``: a hub id) are picked by ``cfg.source``.
    """
    name = cfg.get("source") or cfg.get("name")
    if name is None:
        raise UserError(f"data.name is not set; valid: {', '.join(list_datasets())}")
    return source_loader(str(name))(cfg)
