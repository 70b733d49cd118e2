"""Finished runs (results.json files) -> tables grouped over seeds."""

from hpmkd.report.collect import collect_failures, collect_results, collect_set_aside
from hpmkd.report.tables import summarise

__all__ = ["collect_failures", "collect_results", "collect_set_aside", "summarise"]
