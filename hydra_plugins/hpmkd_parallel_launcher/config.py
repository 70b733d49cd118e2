"""The launcher's settings, registered as ``hydra/launcher=parallel``."""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it
# is in sys.modules, where dataclasses cannot look up string annotations.
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class ParallelLauncherConf:
    _target_: str = "hydra_plugins.hpmkd_parallel_launcher.parallel_launcher.ParallelLauncher"
    # Members running at once. With GPUs: one per GPU, at most this many GPUs. On CPU: this many
    # processes. null: every GPU, or on CPU one process per core (per threads_per_worker cores).
    workers: int | None = None
    # Explicit slots instead of workers; repeat a GPU to share it: [cuda:0, cuda:0, cuda:1].
    devices: list[str] | None = None
    # OMP/MKL threads of each member; null: the machine's cores shared out among the slots.
    threads_per_worker: int | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="parallel", node=ParallelLauncherConf, provider="hpmkd"
)
