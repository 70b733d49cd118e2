"""The launcher class Hydra instantiates; the work happens in ``_launch`` (imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class PackedLauncher(Launcher):
    """Runs the members in this process; their student fits train packed where they can."""

    def __init__(self, max_pack: int | None = None, threads: int | None = None) -> None:
        self.max_pack = max_pack
        self.threads = threads
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.hpmkd_packed_launcher._launch import launch

        return launch(self, job_overrides, initial_job_idx)
