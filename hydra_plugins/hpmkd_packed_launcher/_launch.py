"""Compose each member, run the members' runs one thread at a time up to their student fits,
train the fits that pack together as one model, then let each member finish as a run alone."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, open_dict

from hpmkd.data.stream_loader import cpu_count
from hpmkd.engine.packed import PackMember
from hpmkd.engine.packed_fit import pack_signature, train_pack
from hydra_plugins.hpmkd_packed_launcher.packed_launcher import PackedLauncher

log = logging.getLogger(__name__)

PACKED_STRATEGIES = ("plain", "kd")


def launch(
    launcher: PackedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    config, context = launcher.config, launcher.hydra_context
    assert config is not None and context is not None, "launch() before setup()"
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("Launching %d jobs packed, sweep output dir: %s", len(job_overrides), sweep_dir)

    def job(member: DictConfig) -> JobReturn:
        return run_job(
            task_function=launcher.task_function,  # type: ignore[arg-type]
            config=member,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
            hydra_context=context,
        )

    returns: dict[int, JobReturn] = {}
    pack: list[tuple[int, PackMember, DictConfig]] = []
    for idx, given in enumerate(job_overrides, start=initial_job_idx):
        overrides = list(given)
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        member = context.config_loader.load_sweep_config(config, overrides)
        with open_dict(member):
            member.hydra.job.id = idx
            member.hydra.job.num = idx
        strategy = member.strategy.name if member.get("strategy") else "plain"
        if strategy not in PACKED_STRATEGIES:
            log.info("#%d not packed, run alone: strategy '%s' (packed: plain, kd)", idx, strategy)
            returns[idx] = job(member)
            continue
        run_dir = (Path(str(member.hydra.sweep.dir)) / str(member.hydra.sweep.subdir)).resolve()
        target = functools.partial(job, member)
        pack.append((idx, PackMember(f"#{idx}", run_dir, target), member))

    for _, member, cfg in pack:  # every member up to its student's fit, one after another
        _resume(member, cfg)
    waiting = [(m, cfg) for _, m, cfg in pack if not m.done]
    for group in _groups(waiting, launcher.max_pack):
        members = [m for m, _ in group]
        if len(group) == 1:
            log.info(
                "%s not packed, trained alone: no other member shares its architecture, data, "
                "batches, epochs and optimiser settings",
                members[0].name,
            )
        else:
            threads = launcher.threads or cpu_count()
            log.info("%s: %d student fits packed as one model (%d torch threads)",
                     ",".join(m.name for m in members), len(members), threads)  # fmt: skip
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                results = train_pack([m.request for m in members])  # type: ignore[misc]
            except Exception as err:  # noqa: BLE001 - each member fails with it, as it would alone
                for m in members:
                    m.failure = err
            else:
                for m, result in zip(members, results, strict=True):
                    m.result = result
            finally:
                torch.set_num_threads(previous)
        for m, cfg in group:
            _resume(m, cfg)
    for idx, member, _ in pack:
        if member.error is not None:  # outside run_job: a bug of the launcher itself
            raise member.error
        returns[idx] = member.outcome
    return [returns[idx] for idx in sorted(returns)]


def _resume(member: PackMember, cfg: DictConfig) -> None:
    """Continue ``member`` with its own Hydra config, log file and RNG state in force."""
    if member.request is not None:
        torch.set_rng_state(member.request.rng_state)
        HydraConfig.instance().set_config(cfg)
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
    member.resume()


def _groups(
    waiting: list[tuple[PackMember, DictConfig]], max_pack: int | None
) -> list[list[tuple[PackMember, DictConfig]]]:
    """Members with one ``pack_signature``, in sweep order, at most ``max_pack`` per pack."""
    by_signature: dict[tuple, list[tuple[PackMember, DictConfig]]] = {}
    for member, cfg in waiting:
        by_signature.setdefault(pack_signature(member.request), []).append((member, cfg))  # type: ignore[arg-type]
    size = max_pack or len(waiting) or 1
    return [g[i : i + size] for g in by_signature.values() for i in range(0, len(g), size)]
