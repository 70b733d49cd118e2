"""Child side: one sweep member, already composed by the parent, run in a spawned process."""

from __future__ import annotations

import logging

from hydra.core.utils import JobReturn, JobRuntime, JobStatus, run_job, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig

from hpmkd.config import register_resolvers
from hpmkd.engine.fit import quiet_lightning
from hpmkd.errors import UserError
from hpmkd.train import run_train

log = logging.getLogger(__name__)


def run_member(config: DictConfig, context: HydraContext, task_name: str) -> JobReturn:
    """What Hydra's basic launcher does for one member, in this fresh process."""
    # a spawned process starts without the resolvers and the job name the parent set up
    setup_globals()
    register_resolvers()
    quiet_lightning()
    JobRuntime.instance().set("name", task_name)
    ret = run_job(
        task_function=run_train,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
        hydra_context=context,
    )
    if ret.status is JobStatus.FAILED:
        err = ret._return_value
        # the exception reaches the parent without its traceback: a bug's traceback shows here
        trace = None if isinstance(err, UserError) else err
        log.error("sweep member #%s failed: %s", config.hydra.job.num, err, exc_info=trace)
    return ret
