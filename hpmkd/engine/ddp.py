"""Lightning DDP that never runs the command line again, so it is safe inside Hydra multirun.

Lightning's default DDP launcher starts ranks 1..N-1 by executing ``sys.argv`` once more: under
Hydra multirun that re-runs the sweep or leaves stray output dirs, and ``hpmkd train`` called
in-process has no script to re-run at all. :class:`DDPStrategy` gets its ranks in one of two ways:

- They were started by a launcher (torchrun, ``srun`` on SLURM, LSF, MPI, or ``LOCAL_RANK`` set
  by hand): Lightning's cluster environment says so and this process is one of them. Every rank
  runs the whole run; :func:`is_global_zero` tells which one writes.
- Otherwise each ``trainer.fit`` spawns one worker per device of this node and this process stays
  alone: what happens outside a fit (store, results, nested runs) happens once, here. Workers get
  the module and data by pickle. Rank 0 sends back the trained weights (Lightning does that), the
  states of the callbacks and the epoch count, so after the fit the history, the best checkpoint
  and ``trainer.current_epoch`` read as they do after a fit in one process.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch import strategies
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from hpmkd.engine.fit import quiet_lightning
from hpmkd.errors import UserError

_STATE_KEY = "hpmkd_state"


class DDPStrategy(strategies.DDPStrategy):
    """Lightning's ``DDPStrategy`` with ranks that are already running, or else spawned workers.

    Keyword arguments are those of Lightning's ``DDPStrategy`` (``find_unused_parameters``,
    ``process_group_backend``, ``timeout``...), except ``start_method``.
    """

    def __init__(self, **kwargs: Any) -> None:
        # "popen" selects Lightning's launcher for ranks started outside; it only re-executes the
        # command line when they were not, and then _configure_launcher spawns instead
        super().__init__(start_method="popen", **kwargs)

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        if self.cluster_environment.creates_processes_externally:
            super()._configure_launcher()
        elif self.num_nodes > 1:
            raise UserError(
                f"trainer.num_nodes={self.num_nodes}: start the ranks with torchrun or srun "
                "(one process per device on every node)"
            )
        else:
            self._launcher = _SpawnLauncher(self)


class _SpawnLauncher(_MultiProcessingLauncher):
    """Spawned workers whose rank 0 also returns the callback states and the epoch progress."""

    def __init__(self, strategy: DDPStrategy) -> None:
        super().__init__(strategy, start_method="spawn")

    def launch(
        self, function: Callable, *args: Any, trainer: L.Trainer | None = None, **kwargs: Any
    ) -> Any:
        return super().launch(_quietly, function, *args, trainer=trainer, **kwargs)

    def get_extra_results(self, trainer: L.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        state = {
            "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks},
            "epoch_progress": trainer.fit_loop.epoch_progress.state_dict(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)  # bytes, like Lightning's own metrics: no shared memory
        return extra | {_STATE_KEY: buffer.getvalue()}

    def update_main_process_results(self, trainer: L.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        state = torch.load(io.BytesIO(extra[_STATE_KEY]), weights_only=True)
        for callback in trainer.callbacks:
            if callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])
        trainer.fit_loop.epoch_progress.load_state_dict(state["epoch_progress"])


def _quietly(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run ``function`` in a spawned worker with the console settings of the main process."""
    quiet_lightning()
    return function(*args, **kwargs)


def launched_rank() -> ClusterEnvironment | None:
    """The cluster environment when a launcher started this process as one of several ranks;
    None when this process is alone (and spawns workers for DDP fits itself)."""
    for kind in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        if kind.detect():
            env: ClusterEnvironment = kind()
            return env if env.world_size() > 1 else None
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return LightningEnvironment()
    return None


def is_global_zero() -> bool:
    """True in the one process that writes a run's outputs (rank 0, or the only process)."""
    return rank_zero_only.rank == 0
