"""``trainer.accelerator``/``devices`` checked against this machine before anything runs.

Lightning's own launcher for several processes re-runs the command line; hpmkd's DDP strategy
(``trainer=ddp``, ``trainer=ddp_cpu``) never does, so several devices need one of those.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from hpmkd.errors import UserError

DDP_TARGET = "hpmkd.engine.ddp.DDPStrategy"
_GPU = ("gpu", "cuda")


def run_device_type(accelerator: Any) -> str:
    """``cuda`` or ``cpu``: where a run with ``trainer.accelerator`` trains on this machine."""
    wants_gpu = accelerator in ("auto", *_GPU)
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def check_devices(trainer: Mapping[str, Any]) -> None:
    """UserError when ``trainer`` asks for a GPU this machine lacks, more devices than it has,
    or several devices without hpmkd's DDP strategy."""
    accelerator = trainer.get("accelerator", "auto")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator in _GPU and gpus == 0:
        raise UserError(
            f"trainer.accelerator={accelerator} (trainer=gpu, trainer=ddp) needs a CUDA GPU and "
            "torch sees none; use trainer=cpu, or trainer=ddp_cpu for several CPU processes"
        )
    device = run_device_type(accelerator)
    devices = trainer.get("devices", "auto")
    if devices in ("auto", None):
        return
    if device == "cuda" and not isinstance(devices, int | str):  # a list of GPU ids
        ids = [int(i) for i in devices]
        if any(not 0 <= i < gpus for i in ids):
            raise UserError(f"trainer.devices={ids} but this machine has GPU ids 0..{gpus - 1}")
        count = len(ids)
    else:
        count = _count(devices)
    available = gpus if device == "cuda" else os.cpu_count() or 1
    unit = "GPUs" if device == "cuda" else "CPUs (os.cpu_count())"
    if count == -1:
        count = available
    if count > available:
        raise UserError(
            f"trainer.devices={devices} but this machine has {available} {unit}; "
            f"use at most trainer.devices={available}"
        )
    if count > 1 and not _is_ddp(trainer.get("strategy")):
        hint = "trainer=ddp" if device == "cuda" else "trainer=ddp_cpu"
        raise UserError(
            f"trainer.devices={devices} on {device} needs hpmkd's DDP strategy: pass {hint} "
            f"(one process per device), or trainer.devices=1"
        )


def _count(devices: Any) -> int:
    try:
        count = int(devices)
    except (TypeError, ValueError):
        count = 0
    if count == 0 or count < -1 or isinstance(devices, bool):
        raise UserError(f"trainer.devices must be auto, a positive number or -1, got {devices!r}")
    return count


def _is_ddp(strategy: Any) -> bool:
    return isinstance(strategy, Mapping) and strategy.get("_target_") == DDP_TARGET
