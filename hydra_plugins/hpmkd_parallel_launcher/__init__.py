"""``hydra/launcher=parallel``: the members of an hpmkd multirun at once on one machine.

Hydra finds this plugin through the ``hydra_plugins`` namespace package. Modules whose names
start with an underscore are skipped by Hydra's plugin scan, so torch and hpmkd load only when a
sweep is launched.
"""
