"""The launcher's settings, registered as ``hydra/launcher=packed``."""

# No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it
# is in sys.modules, where dataclasses cannot look up string annotations.
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.hpmkd_packed_launcher.packed_launcher.PackedLauncher"
    # Most members in one pack (the others form further packs); null: no limit.
    max_pack: int | None = None
    # torch threads of the packed training (the members' other work keeps the process's
    # setting); null: every core this process may use
    threads: int | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="hpmkd"
)
