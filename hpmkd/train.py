"""`hpmkd train`: validate, load data, run the strategy, write results.json, print a summary."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from hpmkd import config
from hpmkd.data import load_data
from hpmkd.data.splits import DataSplits
from hpmkd.engine.ddp import is_global_zero
from hpmkd.engine.teacher_cache import cache_summary
from hpmkd.errors import UserError
from hpmkd.hpm.history import append_run
from hpmkd.hpm.record import history_row
from hpmkd.io import write_json_atomic
from hpmkd.models import build_model, count_parameters
from hpmkd.models.family import family_members, member_at_ratio
from hpmkd.results import RESULTS_FILE, build_results, print_summary, write_results
from hpmkd.store import ArtifactStore, content_key
from hpmkd.strategies import RunContext, run_strategy
from hpmkd.strategies.context import model_params
from hpmkd.strategies.multi_teacher import teacher_configs

log = logging.getLogger("hpmkd")

RUN_FILE = "run.json"
FAILURE_FILE = "failure.json"
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


def student_at_ratio(cfg: DictConfig, data: DataSplits) -> None:
    """Replace the student by the member of its family at ``student.target_ratio`` (in place)."""
    shape = {"num_classes": data.num_classes, "input_shape": data.input_shape}
    teacher_params = max(
        count_parameters(build_model(t.arch, **shape, **model_params(t)))
        for t in teacher_configs(cfg)
    )
    student = cfg.student
    members = family_members(student.arch, model_params(student), **shape)
    member, ratio = member_at_ratio(members, teacher_params, float(student.target_ratio))
    log.info(
        "student for target ratio %g: %s, %s parameters (ratio %.1f)",
        student.target_ratio, member.label, f"{member.num_params:,}", ratio,
    )  # fmt: skip
    with open_dict(cfg):
        student.arch = member.arch
        student.params = member.params


def completed_results(out_dir: Path, key: str) -> dict | None:
    """The results of a finished run of this very configuration in ``out_dir``, if any."""
    results_file, run_file = out_dir / RESULTS_FILE, out_dir / RUN_FILE
    if not (results_file.is_file() and run_file.is_file()):
        return None
    if json.loads(run_file.read_text()).get("config_key") != key:
        return None
    results = json.loads(results_file.read_text())
    return results if results.get("status") == "completed" else None


def record_failure(out_dir: Path, cfg: DictConfig, err: BaseException) -> None:
    """``failure.json``: what failed and why, so reports show the run as failed."""
    message = " ".join(str(err).split()) or type(err).__name__
    record = {
        "status": "failed",
        "error": f"{type(err).__name__}: {message}",
        "strategy": cfg.strategy.name if cfg.get("strategy") else "plain",
        "method": (cfg.get("method") or {}).get("name", "ce"),
        "seed": cfg.get("seed"),
        "overrides": _overrides(),
        "time": time.time(),
    }
    write_json_atomic(out_dir / FAILURE_FILE, record)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_train(cfg: DictConfig) -> dict:
    """One run; a finished run of the same config in the same directory is not run again
    (``skip_complete``), and a failure leaves ``failure.json`` before it propagates."""
    out_dir = Path(cfg.paths.output_dir)
    try:
        return _run(cfg, out_dir)
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt):
            record_failure(out_dir, cfg, err)
        raise


def _run(cfg: DictConfig, out_dir: Path) -> dict:
    start = time.perf_counter()
    config.validate(cfg)
    key = run_key(cfg)
    done = completed_results(out_dir, key) if cfg.get("skip_complete", True) else None
    if done is not None:
        log.info("complete already, not run again: %s", out_dir / RESULTS_FILE)
        print_summary(done, out_dir / RESULTS_FILE)
        return done
    ckpt_path = find_resume_checkpoint(cfg, out_dir, key)
    strategy = cfg.strategy.name if cfg.get("strategy") else "plain"
    data = load_data(cfg.data)
    if cfg.student.get("target_ratio"):
        student_at_ratio(cfg, data)
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
    if ctx.teacher_cache_counts:  # teacher forwards the prediction cache saved, over all fits
        result.details["teacher_cache"] = cache_summary(ctx.teacher_cache_counts)
    results = build_results(
        strategy=strategy,
        result=result,
        data=data,
        config=config.to_container(cfg),
        seed=cfg.seed,
        wall_time_s=time.perf_counter() - start,
        perf=ctx.perf.as_dict(),
    )
    if not is_global_zero():  # ranks started by torchrun/srun: rank 0 writes for all of them
        return results
    path = write_results(out_dir, results)
    (out_dir / FAILURE_FILE).unlink(missing_ok=True)  # an earlier attempt's
    row = history_row(results, data)
    if row is not None:
        append_run(cfg.store.root, row)
    print_summary(results, path)
    return results
