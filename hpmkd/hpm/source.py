"""Which run history ACM reads: ``strategy.acm.history`` (METHODS.md section 2, items 1 and 6).

- ``live``: the store's ``history.jsonl`` as it is when the run consults ACM, so every finished
  run improves the next choice. The default of a single run.
- ``frozen``: the store's history as it was when the sweep began, copied once to
  ``<hydra sweep dir>/acm_history.jsonl``. Every run calls ``prepare_history`` first thing, so in
  a multirun the first member to start takes the copy before any member can append its row
  (whatever its strategy, and whether or not its ACM is on); every member, and a re-run of the
  sweep in the same sweep dir, then reads the same rows, whatever order the members run in.
  Hydra's basic launcher, ``hydra/launcher=parallel`` (spawned processes) and the SLURM launcher
  all run a member through Hydra's ``run_job``, which sets the member's HydraConfig: its
  ``mode`` is MULTIRUN and its ``sweep.dir`` the sweep's.
- ``<path>``: that history file, read as it is, never written.
- ``auto`` (the default): ``frozen`` in a multirun (``-m``), ``live`` otherwise.

With SOM off a run has a private, empty store, and ACM reads that store's history (``private``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpmkd.errors import UserError
from hpmkd.hpm.history import HISTORY_FILE, freeze, read_history, read_rows

SNAPSHOT_FILE = "acm_history.jsonl"
AUTO, LIVE, FROZEN = "auto", "live", "frozen"

log = logging.getLogger("hpmkd")


@dataclass(frozen=True)
class HistorySource:
    """Where ACM's rows come from: ``mode`` live, frozen, file or private, and the file."""

    mode: str
    path: Path

    def rows(self) -> list[dict]:
        if self.mode in (LIVE, "private"):  # appended to by other runs: read under its lock
            return read_history(self.path.parent)
        return read_rows(self.path)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "path": str(self.path)}


def sweep_dir() -> Path | None:
    """The sweep directory of the multirun this process runs a member of; None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hydra.sweep.dir)).absolute()


def _setting(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "strategy.acm.history", default=AUTO))


def validate_acm(cfg: DictConfig) -> None:
    """The ``strategy.acm`` settings, where the strategy has them: bad values stop the run
    before anything is loaded."""
    acm = OmegaConf.select(cfg, "strategy.acm")
    if acm is None:
        return
    for key, lowest in (("min_history", 0), ("seed", 0)):
        value = acm.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise UserError(f"strategy.acm.{key} must be a whole number >= {lowest}, got {value!r}")
    setting = acm.get("history")
    if not isinstance(setting, str) or not setting.strip():
        raise UserError(
            f"strategy.acm.history must be auto, live, frozen or a history file, got {setting!r}"
        )
    if setting not in (AUTO, LIVE, FROZEN) and not Path(setting).expanduser().is_file():
        raise UserError(
            f"strategy.acm.history={setting}: no such file (auto, live, frozen or a history file)"
        )


def prepare_history(cfg: DictConfig) -> None:
    """Called at the very start of every run: checks the ACM settings and, in a multirun, makes
    sure the sweep's snapshot of the history exists before this member can add to the history."""
    validate_acm(cfg)
    sweep = sweep_dir()
    if sweep is None:
        if _setting(cfg) == FROZEN:
            raise UserError(
                "strategy.acm.history=frozen needs a multirun (-m), whose sweep directory holds "
                "the snapshot; a single run reads live or a history file"
            )
        return
    if OmegaConf.select(cfg, "strategy.name", default="plain") == "plain":
        return  # no teacher: neither reads nor adds to the history
    snapshot = sweep / SNAPSHOT_FILE
    if freeze(cfg.store.root, snapshot):
        log.info("ACM history of this sweep: %s (a snapshot of %s)", snapshot, cfg.store.root)


def history_source(cfg: DictConfig, private_store: Path | None = None) -> HistorySource:
    """The history ACM reads for this run (``private_store``: the run's own store, SOM off)."""
    if private_store is not None:
        return HistorySource("private", Path(private_store) / HISTORY_FILE)
    setting = _setting(cfg)
    live = HistorySource(LIVE, Path(str(cfg.store.root)).expanduser() / HISTORY_FILE)
    if setting == LIVE:
        return live
    if setting not in (AUTO, FROZEN):
        return HistorySource("file", Path(setting).expanduser().absolute())
    sweep = sweep_dir()
    if sweep is None:
        if setting == FROZEN:
            raise UserError("strategy.acm.history=frozen needs a multirun (-m)")
        return live
    snapshot = sweep / SNAPSHOT_FILE
    freeze(cfg.store.root, snapshot)  # in case the run did not start through prepare_history
    return HistorySource(FROZEN, snapshot)
