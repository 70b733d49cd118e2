"""`hpmkd train`: validate, load data, run the strategy, write results.json, print a summary."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hpmkd import config
from hpmkd.data import load_data
from hpmkd.errors import UserError
from hpmkd.io import write_json_atomic
from hpmkd.results import RESULTS_FILE, build_results, print_summary, write_results
from hpmkd.store import ArtifactStore, content_key
from hpmkd.strategies import RunContext, run_strategy

log = logging.getLogger("hpmkd")

RUN_FILE = "run.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def run_key(cfg: DictConfig) -> str:
    """Identity of a run's configuration, ignoring where it writes and whether it resumes."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("resume", None)  # type: ignore[union-attr]
    plain.pop("paths", None)  # type: ignore[union-attr]
    for node in (plain.get("logger") or {}).values():  # type: ignore[union-attr]
        node.pop("save_dir", None)
    return content_key("run", plain)  # type: ignore[arg-type]


def find_resume_checkpoint(cfg: DictConfig, out_dir: Path, key: str) -> str | None:
    """Resolve ``resume``: a path, or for ``true`` the newest unfinished run with this config."""
    resume = cfg.resume
    if not resume:
        return None
    if isinstance(resume, str):
        path = Path(resume).expanduser()
        if path.is_dir():
            path = path / LAST_CHECKPOINT
        if not path.is_file():
            raise UserError(f"resume: no checkpoint at {path}")
        return str(path)
    candidates = [out_dir] + sorted(
        (p.parent for p in Path(cfg.paths.output_root).rglob(RUN_FILE)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for run_dir in candidates:
        run_file = run_dir / RUN_FILE
        if not (run_dir / LAST_CHECKPOINT).is_file() or (run_dir / RESULTS_FILE).is_file():
            continue
        if run_file.is_file() and OmegaConf.load(run_file).get("config_key") == key:
            log.info("resuming from %s", run_dir / LAST_CHECKPOINT)
            return str(run_dir / LAST_CHECKPOINT)
    raise UserError(
        f"resume=true: no unfinished run with this configuration under {cfg.paths.output_root}; "
        "pass resume=<run dir or checkpoint>"
    )


def _finish_wandb() -> None:
    """One wandb run per job: without finish() every job of a multirun logs into the first."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def run_train(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    config.validate(cfg)
    out_dir = Path(cfg.paths.output_dir)
    key = run_key(cfg)
    ckpt_path = find_resume_checkpoint(cfg, out_dir, key)
    strategy = cfg.strategy.name if cfg.get("strategy") else "plain"
    data = load_data(cfg.data)
    write_json_atomic(out_dir / RUN_FILE, {"config_key": key, "strategy": strategy})
    ctx = RunContext(
        cfg=cfg,
        out_dir=out_dir,
        data=data,
        store=ArtifactStore(cfg.store.root),
        ckpt_path=ckpt_path,
    )
    try:
        result = run_strategy(strategy, ctx)
    finally:
        _finish_wandb()
    results = build_results(
        strategy=strategy,
        result=result,
        data=data,
        config=config.to_container(cfg),
        seed=cfg.seed,
        wall_time_s=time.perf_counter() - start,
    )
    path = write_results(out_dir, results)
    print_summary(results, path)
    return results
