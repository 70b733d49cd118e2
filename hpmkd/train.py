"""`hpmkd train`: validate, load data, run the strategy, write results.json, print a summary."""

from __future__ import annotations

import json
import logging
import sys
import time
import zipfile
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, open_dict
from torch import nn

from hpmkd import config
from hpmkd.data import DataSplits, load_data
from hpmkd.data.stream import StreamSplits
from hpmkd.deploy.record import run_cost, save_contract
from hpmkd.engine.context import LAST_CHECKPOINT, RunContext
from hpmkd.engine.ddp import is_global_zero
from hpmkd.engine.journal import Journal, read_journal, segments
from hpmkd.engine.model_config import student_at_ratio
from hpmkd.engine.packed import PACKED_CHECKPOINT, current_member
from hpmkd.engine.teacher_cache import cache_summary
from hpmkd.errors import UserError
from hpmkd.hpm.history import append_run
from hpmkd.hpm.record import history_row
from hpmkd.hpm.source import prepare_history
from hpmkd.io import write_json_atomic
from hpmkd.methods import DistillMethod
from hpmkd.results import (
    RESULTS_FILE,
    RESUMED_INTO_FILE,
    build_results,
    print_summary,
    run_time,
    write_results,
)
from hpmkd.store import ArtifactStore, content_key
from hpmkd.strategies import run_strategy

log = logging.getLogger("hpmkd")

RUN_FILE = "run.json"
RUN_LOCK = ".run.lock"  # held while a process works on the run
FAILURE_FILE = "failure.json"
# strategies that read the splits as tensors (SMSKD's forgetting rate, the ensemble's accuracy,
# PDC's validation, ACM's meta-features): in-memory data only
IN_MEMORY_STRATEGIES = frozenset({"smskd", "multi_teacher", "progressive", "hpmkd"})


def run_identity(config: dict) -> dict:
    """A run's resolved config without where it writes, whether it resumes, how often it writes
    its resumable checkpoint and which result a sweeper reads (``optimized_metric``): what must
    agree for a run to be the same run."""
    other = ("resume", "paths", "optimized_metric", "checkpoint_every_s", "pack")
    plain = {k: v for k, v in config.items() if k not in other}
    if plain.get("logger"):
        plain["logger"] = {
            name: {k: v for k, v in node.items() if k != "save_dir"}
            if isinstance(node, dict)
            else node
            for name, node in plain["logger"].items()
        }
    return plain


def run_key(cfg: DictConfig) -> str:
    """The identity of a run (``run_identity``) as a store-style key."""
    return content_key("run", run_identity(config.to_container(cfg)))


def check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint that cannot be read (empty, truncated, corrupt or not one at all)
    before anything trains. torch.save writes a zip archive; its CRCs cover every record."""
    problem = None
    if path.stat().st_size == 0:
        problem = "it is empty"
    elif not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            starts_like_one = f.read(4) == b"PK\x03\x04"
        problem = (
            "it is truncated (its archive has no end)"
            if starts_like_one
            else "it is not a PyTorch checkpoint (not a zip archive)"
        )
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                problem = f"its record {bad} is corrupt"
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            problem = f"it is truncated or corrupt ({err})"
    if problem:
        raise UserError(
            f"resume: cannot read checkpoint {path}: {problem}; delete it to train that unit "
            "from its start, or pass another resume=<run dir or checkpoint>"
        )


def _run_dir_of(path: Path) -> Path | None:
    """The run directory (holding ``run.json``) that ``path`` is or lies in."""
    for candidate in (path, *path.parents):
        if (candidate / RUN_FILE).is_file():
            return candidate
    return None


def _is_running(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (the lock dies with its process)."""
    lock = FileLock(str(run_dir / RUN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _is_finished(run_dir: Path) -> bool:
    results = run_dir / RESULTS_FILE
    return results.is_file() and json.loads(results.read_text()).get("status") == "completed"


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def _config_differences(run_dir: Path, config: dict) -> str:
    """``key: theirs != ours`` for the first few settings that differ."""
    theirs = json.loads((run_dir / RUN_FILE).read_text()).get("config")
    if not isinstance(theirs, dict):
        return "a different configuration"
    ours, other = _flatten(run_identity(config)), _flatten(run_identity(theirs))
    keys = sorted(k for k in ours.keys() | other.keys() if ours.get(k) != other.get(k))
    shown = [f"{k}: {other.get(k, '<absent>')} there, {ours.get(k, '<absent>')} here" for k in keys]
    return "; ".join(shown[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def resolve_resume(cfg: DictConfig, out_dir: Path, key: str) -> tuple[Path | None, str | None]:
    """Resolve ``resume`` to (the interrupted run directory to continue in place, or a checkpoint
    from outside any run directory for the main fit). ``true``: the newest unfinished run with
    this configuration; a path: that run directory, or a checkpoint in one (any unit's: the whole
    run resumes), or a Lightning checkpoint of another origin."""
    resume = cfg.resume
    if not resume:
        return None, None
    if isinstance(resume, str):
        path = Path(resume).expanduser()
        if not path.exists():
            raise UserError(f"resume: no such file or directory: {path}")
        run_dir = _run_dir_of(path)
        if run_dir is None:
            if path.is_dir():
                raise UserError(f"resume: {path} is not an hpmkd run directory (no {RUN_FILE})")
            check_checkpoint(path)
            return None, str(path)
        if json.loads((run_dir / RUN_FILE).read_text()).get("config_key") != key:
            differences = _config_differences(run_dir, config.to_container(cfg))
            raise UserError(f"resume: {run_dir} ran another configuration ({differences})")
        if _is_finished(run_dir):
            raise UserError(f"resume: {run_dir} has finished already ({RESULTS_FILE})")
        if _is_running(run_dir):
            raise UserError(f"resume: {run_dir} is still running (its {RUN_LOCK} is held)")
        _check_checkpoints(run_dir)
        return run_dir, None
    candidates = [out_dir] + sorted(
        (p.parent for p in Path(cfg.paths.output_root).rglob(RUN_FILE)),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for run_dir in candidates:
        run_file = run_dir / RUN_FILE
        if not run_file.is_file() or _is_finished(run_dir):
            continue
        if json.loads(run_file.read_text()).get("config_key") == key and not _is_running(run_dir):
            _check_checkpoints(run_dir)
            return run_dir, None
    raise UserError(
        f"resume=true: no unfinished run with this configuration under {cfg.paths.output_root}; "
        "pass resume=<run dir or checkpoint>"
    )


def _check_checkpoints(run_dir: Path) -> None:
    names = (LAST_CHECKPOINT.name, PACKED_CHECKPOINT.name)
    for path in sorted(found for name in names for found in run_dir.rglob(name)):
        check_checkpoint(path)


def continue_in(cfg: DictConfig, out_dir: Path, run_dir: Path) -> Path:
    """Point the run at the interrupted directory ``run_dir``; the directory Hydra made for this
    process says where the run went, so no report counts it as a run of its own."""
    if run_dir.resolve() != out_dir.resolve():
        write_json_atomic(
            out_dir / RESUMED_INTO_FILE, {"resumed_into": str(run_dir), "time": time.time()}
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
        if (member := current_member()) is not None:  # its student's fit is the one to pack
            member.run_dir = run_dir.resolve()
    log.info("resuming the interrupted run in %s", run_dir)
    return run_dir


def _finish_wandb() -> None:
    """One wandb run per job: without finish() every job of a multirun logs into the first."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


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


def run_train(
    cfg: DictConfig,
    *,
    data: DataSplits | None = None,
    given: Mapping[str, nn.Module] | None = None,
    given_method: DistillMethod | None = None,
) -> dict:
    """One run; a finished run of the same config in the same directory is not run again
    (``skip_complete``), and a failure leaves ``failure.json`` (in the directory the run worked
    in) before it propagates. The Python API passes its ``data`` (instead of ``cfg.data``),
    model instances by the ``arch`` their nodes name, and a method instance."""
    try:
        return _run(cfg, Path(cfg.paths.output_dir), data, given or {}, given_method)
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt):
            record_failure(Path(cfg.paths.output_dir), cfg, err)
        raise


def _run(
    cfg: DictConfig,
    out_dir: Path,
    given_data: DataSplits | None,
    given: Mapping[str, nn.Module],
    given_method: DistillMethod | None,
) -> dict:
    started = time.time()
    config.validate(cfg)
    prepare_history(cfg)  # a sweep's ACM history snapshot, before this run can add a row
    key = run_key(cfg)
    done = completed_results(out_dir, key) if cfg.get("skip_complete", True) else None
    if done is not None:
        log.info("complete already, not run again: %s", out_dir / RESULTS_FILE)
        print_summary(done, out_dir / RESULTS_FILE)
        return done
    resume_dir, ckpt_path = resolve_resume(cfg, out_dir, key)
    if resume_dir is not None:
        out_dir = continue_in(cfg, out_dir, resume_dir)
    strategy = cfg.strategy.name if cfg.get("strategy") else "plain"
    data = given_data if given_data is not None else load_data(cfg.data)
    if isinstance(data, StreamSplits) and strategy in IN_MEMORY_STRATEGIES:
        raise UserError(
            f"+strategy={strategy} needs in-memory data, but data '{data.name}' streams; "
            "use data.stream=false if it fits in memory, or +strategy=kd|takd|aggregate|plain"
        )
    if cfg.student.get("target_ratio"):
        student_at_ratio(cfg, data)
    writer = is_global_zero()  # ranks started by torchrun/srun: rank 0 writes for all of them
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / RUN_LOCK)) if writer else nullcontext():
        if resume_dir is None:
            run_record = {"config_key": key, "strategy": strategy, "started": time.time(),
                          "config": config.to_container(cfg)}  # fmt: skip
            write_json_atomic(out_dir / RUN_FILE, run_record)
        journal = (
            Journal.start(out_dir, started=started, resumed=resume_dir is not None)
            if writer
            else None
        )
        ctx = RunContext(
            cfg=cfg,
            out_dir=out_dir,
            data=data,
            store=ArtifactStore(cfg.store.root),
            ckpt_path=ckpt_path,
            journal=journal,
            given=given,
            given_method=given_method,
        )
        try:
            result = run_strategy(strategy, ctx)
        finally:
            _finish_wandb()
        if ctx.teacher_cache_counts:  # teacher forwards the prediction cache saved, over all fits
            result.details["teacher_cache"] = cache_summary(ctx.teacher_cache_counts)
        spans = segments(read_journal(journal.path), now=time.time()) if journal else []
        timing = run_time(result, ctx.units, spans)
        results = build_results(
            strategy=strategy,
            result=result,
            data=data,
            config=config.to_container(cfg),
            seed=cfg.seed,
            wall_time_s=timing["total_s"],
            perf=ctx.perf.as_dict(),
            timing=timing,
        )
        if not writer:
            return results
        save_contract(cfg, data, out_dir)  # deploy.json: what `hpmkd export` needs besides weights
        results["cost"] = run_cost(cfg, data, result.teacher, out_dir, given)
        path = write_results(out_dir, results)
        (out_dir / FAILURE_FILE).unlink(missing_ok=True)  # an earlier attempt's
    row = history_row(results, data) if isinstance(data, DataSplits) else None
    if row is not None:
        append_run(cfg.store.root, row)
    print_summary(results, path)
    return results
