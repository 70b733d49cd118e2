"""Helpers every data source shares: reading config options, atomic writes, error reasons."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from hpmkd.data.splits import split_indices
from hpmkd.errors import UserError


def option(cfg: Mapping, key: str, default: Any = None) -> Any:
    """``cfg[key]`` as plain Python (lists/dicts, interpolations resolved), or ``default``."""
    value = cfg.get(key, default)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return default if value is None else value


def required(cfg: Mapping, key: str, hint: str) -> Any:
    """``cfg[key]``; a UserError naming ``data.<key>`` and what it should hold when unset."""
    value = option(cfg, key)
    if value is None:
        raise UserError(f"dataset '{cfg.get('name')}' needs data.{key}: {hint}")
    return value


def default_cache_dir() -> Path:
    """Per-user cache folder used when the config names no ``cache_dir``."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("hpmkd"))


def one_line(err: BaseException) -> str:
    """An exception's message collapsed onto one line, for UserError messages."""
    return " ".join(str(err).split()) or type(err).__name__


def label_tensor(values: object) -> torch.Tensor:
    """Integer labels (list, numpy array or tensor) as an int64 tensor."""
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


def configured_splits(
    cfg: Mapping, labels: np.ndarray, *, official_test: bool
) -> dict[str, np.ndarray]:
    """``split_indices`` with ``val_fraction`` (default 0.1), ``split_seed`` (0) and, when the data
    has no official test split, ``test_fraction`` (0.2) read from ``cfg``."""
    return split_indices(
        labels,
        val_fraction=_number(cfg, "val_fraction", 0.1, float),
        seed=_number(cfg, "split_seed", 0, int),
        test_fraction=None if official_test else _number(cfg, "test_fraction", 0.2, float),
    )


def _number(cfg: Mapping, key: str, default: float, kind: type) -> Any:
    value = option(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or kind(value) != value:
        raise UserError(f"data.{key} must be a {kind.__name__}, got {value!r}")
    return kind(value)
