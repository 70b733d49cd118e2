"""scikit-learn's embedded Wisconsin breast cancer table: 569 rows, 30 features, 2 classes."""

from __future__ import annotations

from collections.abc import Mapping

from sklearn.datasets import load_breast_cancer

from hpmkd.data.registry import register_source
from hpmkd.data.splits import DataSplits

from ._tabular import tabular_splits


@register_source("breast_cancer")
def load(cfg: Mapping) -> DataSplits:
    """Breast cancer, split and standardised like every table (see ``tabular_splits``)."""
    bunch = load_breast_cancer(as_frame=True)
    class_names = [str(c) for c in bunch.target_names]
    return tabular_splits(cfg, bunch.data, bunch.target.to_numpy(), class_names)
