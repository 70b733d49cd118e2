"""The launcher class Hydra instantiates; the work happens in ``_launch`` (imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ParallelLauncher(Launcher):
    """Runs each sweep member in its own spawned process through :func:`hpmkd.parallel.run_jobs`.

    Hydra's task function (a closure in ``hpmkd.cli``) cannot reach a spawned process; members
    run ``hpmkd.train.run_train``, which is what that closure does in a multirun.
    """

    def __init__(
        self,
        workers: int | None = None,
        devices: Sequence[str] | None = None,
        threads_per_worker: int | None = None,
    ) -> None:
        self.workers = workers
        self.devices = None if devices is None else [str(d) for d in devices]
        self.threads_per_worker = threads_per_worker
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.hpmkd_parallel_launcher._launch import launch

        return launch(self, job_overrides, initial_job_idx)
