"""One module per data source; each exposes ``load(cfg) -> DataSplits``.

Modules prefixed with ``_`` hold the logic the sources share. Sources import their heavy
dependencies (pandas, scikit-learn, torchvision, PIL) at module level, so ``hpmkd.data`` imports
a source module only when that dataset is loaded.
"""
