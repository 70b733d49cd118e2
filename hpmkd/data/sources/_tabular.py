"""Turn feature tables into DataSplits: label encoding, splitting, train-fitted preprocessing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from hpmkd.data.splits import DataSplits
from hpmkd.errors import UserError

from ._common import configured_splits, label_tensor, option

log = logging.getLogger("hpmkd")

# at most this many distinct non-numeric values in a column of numbers are taken for markers
MAX_MARKERS = 3


def encode_labels(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Map labels of any type to int64 codes ``0..K-1`` in sorted order, plus the class names."""
    missing = int(values.isna().sum())
    if missing:
        raise UserError(f"target column '{values.name}' has {missing} missing values")
    try:
        codes, classes = pd.factorize(values, sort=True)
    except TypeError:  # mixed types that do not sort together: compare them as text
        codes, classes = pd.factorize(values.astype(str), sort=True)
    if len(classes) < 2:
        raise UserError(
            f"target column '{values.name}' holds a single class ({', '.join(map(str, classes))}); "
            "classification needs at least two"
        )
    return codes.astype(np.int64), [str(c) for c in classes]


def check_columns(frame: pd.DataFrame, wanted: list[str], what: str, where: str) -> None:
    """UserError naming the first of ``wanted`` missing from ``frame`` and listing its columns."""
    for column in wanted:
        if column not in frame.columns:
            raise UserError(
                f"{what} column '{column}' not found in {where}; columns: "
                + ", ".join(map(str, frame.columns))
            )


def _missing_markers(frame: pd.DataFrame, markers: list[str]) -> pd.DataFrame:
    """``markers`` (``data.na_values``) read as missing; a text column that is numeric apart
    from them becomes numeric."""
    if not markers:
        return frame
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_numeric_dtype(frame[column]):
            continue
        values = frame[column].mask(frame[column].astype(str).str.strip().isin(markers))
        numbers = pd.to_numeric(values, errors="coerce")
        frame[column] = numbers if numbers.notna().sum() == values.notna().sum() else values
    return frame


def _refuse_numeric_with_markers(values: pd.Series) -> None:
    """UserError for a column of numbers with a few non-numeric markers (``?``, ``-``): read as
    text it would be one-hot encoded, one feature per distinct number."""
    text = values.dropna().astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce").notna()
    markers = sorted(set(text[~numeric]))
    if numeric.mean() >= 0.5 and len(markers) <= MAX_MARKERS:
        listed = ", ".join(repr(m) for m in markers)
        raise UserError(
            f"column '{values.name}' is numeric except for {listed}; read the markers as missing "
            f"with data.na_values=[{','.join(markers)}] (and data.impute=median), or one-hot "
            "encode the column by naming it in data.categorical"
        )


def _check_numeric(numeric: pd.DataFrame, impute: object) -> None:
    """UserError for infinite values, and for missing ones unless ``impute`` is ``median``."""
    infinite = [str(c) for c in numeric.columns if np.isinf(numeric[c].to_numpy(float)).any()]
    if infinite:
        raise UserError(
            f"infinite values in column(s) {', '.join(infinite)}; fix the table or leave the "
            "column(s) out with data.drop"
        )
    if impute not in (None, "median"):
        raise UserError(f"data.impute must be null or median, got {impute!r}")
    missing = numeric.isna().sum()
    missing = missing[missing > 0]
    if missing.empty:
        return
    counts = ", ".join(f"{c} ({n} missing)" for c, n in missing.items())
    if impute is None:
        raise UserError(
            f"missing values in numeric column(s) {counts}; pass data.impute=median to fill them "
            "with the training median, or leave the column(s) out with data.drop"
        )
    log.info("imputed the training median into %s", counts)


def _preprocessor(categorical: list[str], numeric: list[str]) -> ColumnTransformer:
    """Median-impute + standardise numeric columns; one-hot encode categorical ones."""
    return ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
        ],
        sparse_threshold=0.0,
    )


def tabular_splits(
    cfg: Mapping,
    features: pd.DataFrame,
    labels: np.ndarray,
    class_names: list[str],
    *,
    test_features: pd.DataFrame | None = None,
    test_labels: np.ndarray | None = None,
    categorical: list[str] | None = None,
    name: str | None = None,
) -> DataSplits:
    """Build DataSplits from a feature table and int64 label codes.

    Without an official test table a stratified ``test_fraction`` (default 0.2) is carved first,
    then ``val_fraction`` (default 0.1) of the rest, both with ``split_seed`` (default 0).
    Categorical columns (``categorical``, default: every non-numeric column) are one-hot encoded
    (unknown values ignored, missing values kept as their own category; the columns are logged);
    a text column of numbers with a few markers is refused unless ``na_values`` names them.
    Numeric columns are standardised; missing numeric values are refused unless ``impute`` is
    ``median`` (the training median, logged), infinite ones always. Every step is fitted on the
    training split only. Features become float32.
    """
    if features.shape[1] == 0:
        raise UserError(f"dataset '{name or cfg['name']}' has no feature columns")
    if test_features is not None:
        check_columns(test_features, list(features.columns), "feature", "the test table")
        test_features = test_features[features.columns]
    markers = [str(m) for m in option(cfg, "na_values", [])]
    features = _missing_markers(features, markers)
    if test_features is not None:
        test_features = _missing_markers(test_features, markers)
    if categorical is None:
        categorical = [
            c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])
        ]
        for column in categorical:
            _refuse_numeric_with_markers(features[column])
    check_columns(features, categorical, "categorical", "the feature table")
    if categorical:
        log.info("categorical (one-hot encoded) columns: %s", ", ".join(map(str, categorical)))
    numeric = [c for c in features.columns if c not in categorical]
    every = features if test_features is None else pd.concat([features, test_features])
    _check_numeric(every[numeric], option(cfg, "impute"))
    features = features.astype({c: str for c in categorical})

    parts = configured_splits(cfg, labels, official_test=test_features is not None)
    if test_features is None:
        test_features, test_labels = features.iloc[parts["test"]], labels[parts["test"]]
    else:
        test_features = test_features.astype({c: str for c in categorical})

    transform = _preprocessor(categorical, numeric).fit(features.iloc[parts["train"]])
    width = len(transform.get_feature_names_out())

    def encode(frame: pd.DataFrame) -> torch.Tensor:
        if len(frame) == 0:  # sklearn refuses to transform zero rows (val_fraction 0)
            return torch.zeros((0, width), dtype=torch.float32)
        return torch.from_numpy(np.asarray(transform.transform(frame), dtype=np.float32))

    return DataSplits(
        name=name or str(cfg["name"]),
        x_train=encode(features.iloc[parts["train"]]),
        y_train=label_tensor(labels[parts["train"]]),
        x_val=encode(features.iloc[parts["val"]]),
        y_val=label_tensor(labels[parts["val"]]),
        x_test=encode(test_features),
        y_test=label_tensor(test_labels),
        num_classes=len(class_names),
        class_names=list(class_names),
        input_shape=(width,),
        is_image=False,
        table_transform=table_contract(transform, numeric, categorical),
    )


def table_contract(transform: ColumnTransformer, numeric: list, categorical: list) -> dict:
    """The fitted preprocessing as plain numbers: each encoded column's name and, for the
    numeric ones, the training median (imputed for a missing value), mean and scale; one-hot
    columns pass through (their categories are listed). Deployment applies it to raw rows."""
    scaler = transform.named_transformers_["numeric"][-1] if numeric else None
    imputer = transform.named_transformers_["numeric"][0] if numeric else None
    onehot = transform.named_transformers_["categorical"] if categorical else None
    return {
        "columns": [str(c) for c in numeric],
        "median": [float(v) for v in imputer.statistics_] if imputer else [],
        "mean": [float(v) for v in scaler.mean_] if scaler else [],
        "scale": [float(v) for v in scaler.scale_] if scaler else [],
        "categorical": {
            str(c): [str(v) for v in cats]
            for c, cats in zip(categorical, onehot.categories_ if onehot else [], strict=False)
        },
    }
