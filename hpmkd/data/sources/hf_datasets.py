"""Hugging Face datasets (``data=hf data.name=<hub id or local folder>``): image or tabular.

Image sets (an ``Image`` feature) small enough are decoded into uint8 ``DataSplits``; larger ones
(or ``data.stream=true``) are ``StreamSplits`` over the memory-mapped Arrow table. Tables become
standardised float ``DataSplits`` through the tabular sources' preprocessing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits
from hpmkd.data.stream import StreamSplits, should_stream
from hpmkd.errors import UserError

from ._common import configured_splits, one_line, option
from ._ready_streams import decoded_splits, ready_stream_splits, stack_images
from ._tabular import encode_labels, tabular_splits

log = logging.getLogger("hpmkd")

EXTRA = "pip install 'hpmkd[datasets]'"
# hpmkd's split -> the names a dataset may give it, in order of preference
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val"), "test": ("test",)}
LABEL_NAMES = ("label", "labels", "target", "class")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(f"data=hf needs the datasets library: {EXTRA}") from None
    return datasets


def open_dataset(cfg: Mapping) -> dict[str, Any]:
    """``{split name: datasets.Dataset}``: ``load_from_disk`` for a folder written by
    ``save_to_disk``, ``load_dataset`` for a hub id or any other local path."""
    datasets = _datasets()
    if option(cfg, "name") is None:
        raise UserError("data=hf needs data.name=<a Hugging Face hub id or a local dataset folder>")
    ref = str(cfg["name"])
    path = Path(ref).expanduser()
    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    try:
        if saved:
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(
                ref,
                name=option(cfg, "config_name"),
                revision=option(cfg, "revision"),
                cache_dir=option(cfg, "cache_dir"),
            )
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        if saved or path.exists():
            raise UserError(
                f"cannot read Hugging Face dataset at {path}: {one_line(err)}"
            ) from None
        raise UserError(
            f"could not load Hugging Face dataset '{ref}': {one_line(err)}; when offline, save it "
            "with datasets' save_to_disk on a machine with internet and pass "
            "data.name=<that folder>"
        ) from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def pick_splits(cfg: Mapping, available: dict[str, Any]) -> dict[str, Any]:
    """``train``/``val``/``test`` -> a dataset split, or None when it is to be carved.

    ``data.splits.<split>`` names the split to use (null: detect it by name, among the splits
    not named for another role).
    """
    chosen = dict(option(cfg, "splits", {}) or {})
    unknown = set(chosen) - set(SPLIT_NAMES)
    if unknown:
        raise UserError(f"data.splits has unknown keys {sorted(unknown)}; valid: train, val, test")
    named = {n for n in chosen.values() if n is not None}
    out = {}
    for split, names in SPLIT_NAMES.items():
        name = chosen.get(split)
        if name is None:
            name = next((n for n in names if n in available and n not in named), None)
        elif name not in available:
            raise UserError(
                f"data.splits.{split}={name}: no such split; the dataset has "
                + ", ".join(sorted(available))
            )
        out[split] = None if name is None else available[name]
    if out["train"] is None:
        raise UserError(
            "the dataset has no 'train' split; name one with data.splits.train=<split>; "
            "splits: " + ", ".join(sorted(available))
        )
    return out


def _columns(cfg: Mapping, features: Mapping) -> tuple[str | None, str]:
    """(image column or None for a table, label column), detected or from the config."""
    image = option(cfg, "image_column")
    label = option(cfg, "label_column")
    for what, column in (("image", image), ("label", label)):
        if column is not None and column not in features:
            raise UserError(
                f"data.{what}_column={column}: no such column; columns: {', '.join(features)}"
            )
    if image is None:
        images = [c for c, f in features.items() if type(f).__name__ == "Image"]
        if len(images) > 1:
            raise UserError(
                f"several image columns ({', '.join(images)}); pick one with data.image_column"
            )
        image = images[0] if images else None
    if label is None:
        classes = [c for c, f in features.items() if type(f).__name__ == "ClassLabel"]
        named = [c for c in LABEL_NAMES if c in features]
        if len(classes) > 1:
            raise UserError(
                f"several ClassLabel columns ({', '.join(classes)}); pick one with "
                "data.label_column"
            )
        label = classes[0] if classes else (named[0] if named else None)
        if label is None:
            raise UserError(
                "no label column found (no ClassLabel feature, none named "
                f"{'/'.join(LABEL_NAMES)}); name it with data.label_column; columns: "
                + ", ".join(features)
            )
    return image, label


def _labels(splits: dict[str, Any], column: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every split's labels as int64 codes, and the class names.

    A ClassLabel feature gives both; other labels are encoded in sorted order (logged).
    """
    feature = splits["train"].features[column]
    present = [(split, d) for split, d in splits.items() if d is not None]
    if type(feature).__name__ == "ClassLabel":
        # through numpy: a Column read value by value takes seconds per 100k rows
        codes = {s: d.with_format("numpy")[column][:].astype(np.int64) for s, d in present}
        names = [str(n) for n in feature.names]
    else:
        raw = {s: d.select_columns([column]).to_pandas()[column] for s, d in present}
        codes_all, names = encode_labels(pd.concat(raw.values(), ignore_index=True))
        bounds = np.cumsum([0, *(len(v) for v in raw.values())])
        codes = {s: codes_all[a:b] for s, a, b in zip(raw, bounds[:-1], bounds[1:], strict=True)}
        log.info("label column '%s' encoded as classes %s", column, ", ".join(names))
    for split, values in codes.items():
        missing = int((values < 0).sum())
        if missing:
            raise UserError(
                f"split '{split}' has {missing} rows without a label in '{column}' (a hidden test "
                "set?); use another split as the test split, e.g. data.splits.test=validation "
                "data.splits.val=null"
            )
    return codes, names


@register_source("hf")
def load(cfg: Mapping) -> DataSplits | StreamSplits:
    """A Hugging Face dataset (``name``: hub id with ``revision``/``config_name``, or a local
    folder); official train/validation/test splits used when present, the missing ones carved
    with ``val_fraction``/``test_fraction`` and ``split_seed``."""
    splits = pick_splits(cfg, open_dataset(cfg))
    image, label = _columns(cfg, splits["train"].features)
    codes, class_names = _labels(splits, label)
    if image is None:
        return _table(cfg, splits, label, codes, class_names)
    return _images(cfg, splits, (image, label), codes, class_names)


# --- tables -----------------------------------------------------------------------------------


def _frame(dataset: Any, label: str, drop: list[str]) -> pd.DataFrame:
    """Feature columns as a DataFrame: ClassLabel columns as their names (so they are one-hot
    encoded); nested columns (lists, images, audio) refused."""
    features = {c: f for c, f in dataset.features.items() if c != label and c not in drop}
    nested = [c for c, f in features.items() if type(f).__name__ != "Value" and not _is_class(f)]
    if nested:
        raise UserError(
            f"column(s) {', '.join(nested)} hold neither numbers nor text; leave them out with "
            f"data.drop=[{','.join(nested)}]"
        )
    frame = dataset.select_columns(list(features)).to_pandas()
    for column, feature in features.items():
        if _is_class(feature):
            frame[column] = [feature.int2str(int(v)) for v in frame[column]]
    return frame


def _is_class(feature: Any) -> bool:
    return type(feature).__name__ == "ClassLabel"


def _table(
    cfg: Mapping, splits: dict, label: str, codes: dict, class_names: list[str]
) -> DataSplits:
    drop = [str(c) for c in option(cfg, "drop", [])]
    frames = {s: _frame(d, label, drop) for s, d in splits.items() if d is not None}
    name = _display_name(cfg)
    if "val" not in frames:
        return tabular_splits(
            cfg, frames["train"], codes["train"], class_names,
            test_features=frames.get("test"), test_labels=codes.get("test"), name=name,
        )  # fmt: skip
    # tabular_splits carves its validation split itself: with the official one it runs twice on
    # the same training rows (so the same fitted preprocessing), once holding out the validation
    # split and once the test split
    train, train_codes = frames["train"], codes["train"]
    if "test" not in frames:
        parts = configured_splits({**cfg, "val_fraction": 0.0}, train_codes, official_test=False)
        frames["test"], codes["test"] = train.iloc[parts["test"]], train_codes[parts["test"]]
        train, train_codes = train.iloc[parts["train"]], train_codes[parts["train"]]
    rule = {**cfg, "val_fraction": 0.0}
    held = {
        split: tabular_splits(
            rule,
            train,
            train_codes,
            class_names,
            test_features=frames[split],
            test_labels=codes[split],
            name=name,
        )
        for split in ("val", "test")
    }
    data = held["test"]
    data.x_val, data.y_val = held["val"].x_test, held["val"].y_test
    return data


def _display_name(cfg: Mapping) -> str:
    return Path(str(cfg["name"])).name if Path(str(cfg["name"])).exists() else str(cfg["name"])


# --- images -----------------------------------------------------------------------------------


class ArrowImages(Dataset):
    """Rows of a memory-mapped Arrow table as ``(PIL image, int label)``; pickles by file path,
    so DataLoader workers map the same files rather than copying rows."""

    def __init__(self, table: Any, column: str, labels: np.ndarray) -> None:
        self.table = table.select_columns([column])
        self.column = column
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.table[int(index)][self.column], int(self.labels[index])


def _carve(cfg: Mapping, splits: dict, codes: dict) -> dict[str, tuple[Any, np.ndarray]]:
    """``(table, labels)`` per split: official ones as they are, the missing ones carved from
    train (``Dataset.select``: an index mapping, no copy)."""
    train, labels = splits["train"], codes["train"]
    rule = cfg if splits["val"] is None else {**cfg, "val_fraction": 0.0}
    parts = configured_splits(rule, labels, official_test=splits["test"] is not None)
    out = {"train": (train.select(parts["train"]), labels[parts["train"]])}
    for split in ("val", "test"):
        if splits[split] is not None:
            out[split] = (splits[split], codes[split])
        else:
            out[split] = (train.select(parts[split]), labels[parts[split]])
    return out


def _decode(image: Any, resize: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as HxW (grey) or HxWx3 uint8, resized to ``resize`` = (H, W) when given."""
    from PIL import Image

    grey = image.getbands()[0] in {"1", "L", "I", "F"} and len(image.getbands()) == 1
    image = image.convert("L" if grey else "RGB")
    if resize is not None:
        image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _decode_split(table: Any, column: str, resize: tuple[int, int] | None) -> list[np.ndarray]:
    return [_decode(row[column], resize) for row in table.select_columns([column])]


def _images(
    cfg: Mapping, splits: dict, columns: tuple[str, str], codes: dict, class_names: list[str]
) -> DataSplits | StreamSplits:
    column = columns[0]
    parts = _carve(cfg, splits, codes)
    resize = option(cfg, "resize")
    if resize is not None and len(resize) != 2:
        raise UserError(f"data.resize must be [H, W] or null, got {resize}")
    first = _decode(splits["train"][0][column], None)
    shape = (1 if first.ndim == 2 else 3, *(resize or first.shape[:2]))
    if should_stream(cfg, len(parts["train"][1]), shape):
        return ready_stream_splits(
            cfg,
            {s: ArrowImages(t, column, y) for s, (t, y) in parts.items()},
            class_names,
            identity=_identity(cfg, splits, columns),
            name=_display_name(cfg),
        )
    x = stack_images({s: _decode_split(t, column, resize) for s, (t, _) in parts.items()})
    labels = {s: y for s, (_, y) in parts.items()}
    return decoded_splits(cfg, _display_name(cfg), x, labels, class_names)


def _identity(cfg: Mapping, splits: dict, columns: tuple[str, str]) -> dict:
    """What names the data for the store: the dataset, its Arrow fingerprints, the split rule."""
    return {
        "source": "hf",
        "dataset": str(cfg["name"]),
        "config_name": option(cfg, "config_name"),
        "revision": option(cfg, "revision"),
        # datasets' own content hash of each split (no public accessor)
        "fingerprints": {s: d._fingerprint for s, d in splits.items() if d is not None},
        "columns": list(columns),
        "split": {k: option(cfg, k) for k in ("val_fraction", "test_fraction", "split_seed")},
    }
