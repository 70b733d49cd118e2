"""OpenML tables (adult, credit-g, wine quality): downloaded once, then read from a local copy."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError
from hpmkd.io import write_atomic

from ._common import default_cache_dir, one_line, option
from ._tabular import check_columns, encode_labels, tabular_splits

# dataset name -> (OpenML data_id, target column)
OPENML_SETS: dict[str, tuple[int, str]] = {
    "adult": (1590, "class"),
    "credit_g": (31, "class"),
    "wine_quality": (287, "quality"),
}


def _download(name: str, data_id: int, target: str, cache: Path) -> pd.DataFrame:
    """Fetch the table from OpenML; a UserError naming the dataset and cache when that fails."""
    import sklearn.datasets

    try:
        bunch = sklearn.datasets.fetch_openml(
            data_id=data_id, as_frame=True, data_home=str(cache.parent / "sklearn")
        )
    except (OSError, ValueError) as err:
        raise UserError(
            f"could not download OpenML dataset '{name}' (data_id {data_id}): {one_line(err)}; "
            f"no cached copy at {cache}"
        ) from None
    frame = bunch.frame
    check_columns(frame, [target], "target", f"OpenML dataset '{name}' (data_id {data_id})")
    return frame


def fetch_table(name: str, data_id: int, target: str, cache_dir: Path) -> pd.DataFrame:
    """The table from ``<cache_dir>/openml/<name>.csv``, downloading and storing it first if absent.

    A json sidecar records data_id and target; a cached copy of another data_id is replaced.
    """
    cache = cache_dir / "openml" / f"{name}.csv"
    sidecar = cache.with_suffix(".json")
    meta = {"data_id": data_id, "target": target}
    if cache.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == meta:
        return pd.read_csv(cache)
    frame = _download(name, data_id, target, cache)
    write_atomic(cache, lambda tmp: frame.to_csv(tmp, index=False))
    write_atomic(sidecar, lambda tmp: tmp.write_text(json.dumps(meta)))
    return pd.read_csv(cache)  # the same dtypes on the first and on every later load


@register_source(*OPENML_SETS)
def load(cfg: Mapping) -> DataSplits:
    """An OpenML table named by ``cfg.name`` (``data_id``/``target`` overridable), its cache
    under ``cache_dir``; test and val splits carved with ``test_fraction``/``val_fraction``."""
    name = str(cfg["name"])
    default_id, default_target = OPENML_SETS[name]
    data_id = int(option(cfg, "data_id", default_id))
    target = str(option(cfg, "target", default_target))
    cache_dir = Path(option(cfg, "cache_dir", default_cache_dir())).expanduser()
    frame = fetch_table(name, data_id, target, cache_dir)
    labels, class_names = encode_labels(frame[target])
    return tabular_splits(cfg, frame.drop(columns=[target]), labels, class_names)
