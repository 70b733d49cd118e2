"""Parent side: compose each member's config here, run the members as spawned jobs, and turn
their outcomes into Hydra ``JobReturn`` objects (a member that failed or died is a failed one)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from hpmkd.errors import UserError
from hpmkd.parallel import Job, JobResult, run_jobs
from hpmkd.train import completed_results, run_key
from hydra_plugins.hpmkd_parallel_launcher._member import run_member
from hydra_plugins.hpmkd_parallel_launcher.parallel_launcher import ParallelLauncher

log = logging.getLogger(__name__)


def launch(
    launcher: ParallelLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    config, context = launcher.config, launcher.hydra_context
    assert config is not None and context is not None, "launch() before setup()"
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs in parallel, sweep output dir: %s", len(job_overrides), sweep_dir)
    task_name = JobRuntime.instance().get("name")

    returns: dict[int, JobReturn] = {}
    jobs: list[Job] = []
    members: list[tuple[int, list[str]]] = []
    for idx, given in enumerate(job_overrides, start=initial_job_idx):
        overrides = list(given)
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        member = context.config_loader.load_sweep_config(config, overrides)
        with open_dict(member):
            member.hydra.job.id = idx
            member.hydra.job.num = idx
        done = _complete_already(member)
        if done is not None:
            returns[idx] = JobReturn(
                overrides=overrides, status=JobStatus.COMPLETED, _return_value=done
            )
            continue
        devices = OmegaConf.select(member, "trainer.devices")
        if not _one_device(devices):
            message = (
                f"trainer.devices={devices}: hydra/launcher=parallel gives each member one device;"
                " multi-device runs need hydra/launcher=hpmkd_slurm or a single run"
            )
            log.error("#%d not run: %s", idx, message)
            returns[idx] = _failed(overrides, UserError(message))
            continue
        jobs.append(Job(f"#{idx}", run_member, (member, context, task_name)))
        members.append((idx, overrides))

    results = run_jobs(
        jobs,
        workers=launcher.workers,
        devices=launcher.devices,
        threads_per_worker=launcher.threads_per_worker,
        on_done=_log_done,
    )
    for (idx, overrides), result in zip(members, results, strict=True):
        if result.ok:
            returns[idx] = result.value
        else:  # the child died or its JobReturn could not come back
            returns[idx] = _failed(overrides, RuntimeError(f"sweep member #{idx}: {result.error}"))
    return [returns[idx] for idx in sorted(returns)]


def _complete_already(member: DictConfig) -> dict | None:
    """The results of a member whose directory already holds complete results of its
    configuration (``skip_complete``), checked here: starting a process only for the member to
    find that out costs more than a short member's whole training."""
    if not member.get("skip_complete", True):
        return None
    out_dir = Path(str(member.hydra.sweep.dir)) / str(member.hydra.sweep.subdir)
    with open_dict(member):
        member.hydra.runtime.output_dir = str(out_dir.absolute())
    HydraConfig.instance().set_config(member)  # `${hydra:...}` in the job's own settings
    job = member.copy()
    with open_dict(job):
        del job["hydra"]  # as the job sees its config (Hydra's run_job drops it)
    done = completed_results(out_dir, run_key(job))
    if done is not None:
        log.info("#%s complete already, not started: %s", member.hydra.job.num, out_dir)
    return done


def _one_device(devices: Any) -> bool:
    """Whether Lightning's ``devices`` setting fits a slot that holds one device."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices) <= 1
    text = str(devices).strip()
    if "," in text:  # "0,1": a list of GPU indices
        return False
    try:
        return int(text) <= 1  # -1 (all visible) is the slot's one device
    except ValueError:  # "auto", or nothing set
        return True


def _failed(overrides: list[str], err: Exception) -> JobReturn:
    return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=err)


def _log_done(result: JobResult) -> None:
    where = result.device or f"cpu worker {result.worker}"
    if not result.ok:
        log.error(
            "%s failed after %.0f s on %s: %s", result.name, result.seconds, where, result.error
        )
        return
    outcome = "done" if result.value.status is JobStatus.COMPLETED else "failed"
    log.info("%s %s after %.0f s on %s", result.name, outcome, result.seconds, where)
