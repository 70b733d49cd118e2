"""One module per data source; each registers its ``load(cfg) -> DataSplits`` with
``@register_source(name)`` (hpmkd/data/registry.py, whose table names the module of each source).

Modules prefixed with ``_`` hold the logic the sources share. Sources import their heavy
dependencies (pandas, scikit-learn, torchvision, PIL) at module level, so ``hpmkd.data`` imports
a source module only when that dataset is loaded.
"""
