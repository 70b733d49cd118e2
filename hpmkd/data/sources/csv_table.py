"""A classification table from a local CSV file (and optionally a separate test CSV)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError

from ._common import one_line, option, required
from ._tabular import check_columns, encode_labels, tabular_splits


def read_table(path: Path, sep: str) -> pd.DataFrame:
    """Read a CSV file; a UserError naming the path when it is missing or unreadable."""
    if not path.is_file():
        raise UserError(f"CSV file '{path}' does not exist")
    try:
        return pd.read_csv(path, sep=sep, skipinitialspace=True)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read CSV file '{path}': {one_line(err)}") from None


@register_source("csv")
def load(cfg: Mapping) -> DataSplits:
    """Table at ``path``: label column ``target`` (default: the last column), ``drop`` columns
    ignored, ``categorical`` columns one-hot encoded (default: the non-numeric ones). With
    ``test_path`` that file is the test split; otherwise ``test_fraction`` of ``path`` is."""
    path = Path(required(cfg, "path", "the CSV file to read")).expanduser()
    sep = str(option(cfg, "sep", ","))
    frame = read_table(path, sep)
    target = str(option(cfg, "target", frame.columns[-1]))
    drop = [str(c) for c in option(cfg, "drop", [])]
    check_columns(frame, [target], "target", str(path))
    check_columns(frame, drop, "drop", str(path))
    categorical = option(cfg, "categorical")

    test_path = option(cfg, "test_path")
    test_frame = None
    if test_path is not None:
        test_path = Path(test_path).expanduser()
        test_frame = read_table(test_path, sep)
        check_columns(test_frame, [target], "target", str(test_path))
    labels, class_names = encode_labels(
        frame[target] if test_frame is None else pd.concat([frame[target], test_frame[target]])
    )
    features = frame.drop(columns=[target, *drop])
    return tabular_splits(
        cfg,
        features,
        labels[: len(frame)],
        class_names,
        test_features=None if test_frame is None else test_frame.drop(columns=[target]),
        test_labels=None if test_frame is None else labels[len(frame) :],
        categorical=None if categorical is None else [str(c) for c in categorical],
        name=path.stem,
    )
