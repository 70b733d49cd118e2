"""Performance switches (``conf/perf``): what each resolves to on a device, and applying them.

``auto`` turns a switch on where it is known to pay and off elsewhere:

- ``trainer.precision=auto``: ``bf16-mixed`` on a CUDA device with bf16, and for conv nets on a
  CPU with AMX bf16 tiles (measured on a Xeon with AMX: a ResNet-20 training step 1.6x and a
  ResNet-56 forward 2x faster than fp32; MLPs gain nothing, so they stay in fp32); ``32-true``
  otherwise. KD losses cast their inputs to fp32 either way.
- ``channels_last``: conv nets' weights and input batches in NHWC, on the CPU (measured: +14 %
  for a ResNet-20 step, +38 % for a ResNet-56 forward) and on CUDA; models without a 2-D
  convolution (MLPs) and non-image batches are never touched.
- ``device_data``: on CUDA the train/val/test tensors are copied to the device once per fit and
  batches are indexed there; on the CPU they already are where the model is.
- ``fused_optimizer``: the optimiser's fused kernel (``fused=True``: one kernel per step for all
  parameters, where the default is a Python loop over them). ``auto``: Adam and AdamW on the CPU
  and CUDA (measured on a 2-core CPU, ``scripts/bench_optimizer.py``: a 4k-parameter MLP's epoch
  1.15-1.25x faster, a 274k-parameter one 1.02-1.09x; SGD gained 1.07x on the small MLP and lost
  5 % on the larger one, so it is fused only when asked); ``true``: any class that has a fused
  kernel (Adam, AdamW, SGD, Adagrad). A recipe that sets ``fused`` or ``foreach`` keeps its
  choice.
- ``compile`` (``torch.compile`` of the student's and the teacher's forward) and ``cuda_graphs``
  (compile mode ``reduce-overhead``; CUDA only) are off unless switched on.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, get_args

import lightning as L
import torch
from lightning.fabric.plugins.precision.precision import (
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from hpmkd.errors import UserError
from hpmkd.models.ensemble import TeacherEnsemble

log = logging.getLogger("hpmkd")

AUTO = "auto"
# where an ``auto`` switch pays, by device type
AUTO_ON = {
    "channels_last": ("cpu", "cuda"),
    "device_data": ("cuda",),
    "fused_optimizer": ("cpu", "cuda"),
}
FP16_AMP = ("16", "16-mixed")
# the optimisers ``perf.fused_optimizer=auto`` fuses (measured to gain; scripts/bench_optimizer.py)
FUSED_BY_DEFAULT = (torch.optim.Adam, torch.optim.AdamW)


@dataclass(frozen=True)
class PerfSwitches:
    """The switches as resolved for one device; recorded in results.json as ``perf``."""

    device: str = "cpu"
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    device_data: bool = False
    fused_optimizer: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_perf(
    perf: Mapping[str, Any],
    precision: Any,
    device: torch.device,
    *,
    conv: bool = False,
    optimizer: Mapping[str, Any] | None = None,
) -> PerfSwitches:
    """``perf`` (the config group) and ``trainer.precision`` resolved for ``device``; ``conv``:
    the run trains a conv net (which decides ``precision=auto`` on the CPU); ``optimizer``: the
    recipe's optimiser node (``_target_`` and its arguments)."""
    cuda = device.type == "cuda"
    cuda_graphs = _switch(perf, "cuda_graphs", device, allow_auto=False)
    if cuda_graphs and not cuda:
        log.warning("perf.cuda_graphs=true needs a CUDA device; running without on %s", device)
        cuda_graphs = False
    return PerfSwitches(
        device=device.type,
        precision=_precision(precision, device, conv),
        channels_last=_switch(perf, "channels_last", device),
        compile=_switch(perf, "compile", device, allow_auto=False) or cuda_graphs,
        cuda_graphs=cuda_graphs,
        # on the CPU the data already is where the model is
        device_data=_switch(perf, "device_data", device) and device.type != "cpu",
        fused_optimizer=_fused_optimizer(perf, device, optimizer),
    )


def _fused_optimizer(
    perf: Mapping[str, Any], device: torch.device, optimizer: Mapping[str, Any] | None
) -> bool:
    """Whether the optimiser steps with its fused kernel: the recipe's own ``fused`` or
    ``foreach`` wins; else the switch, where the class has a fused kernel."""
    wanted = perf.get("fused_optimizer", AUTO)
    on = _switch(perf, "fused_optimizer", device)
    if optimizer is None:
        return False
    if "fused" in optimizer or "foreach" in optimizer:
        return bool(optimizer.get("fused"))
    kind = optimizer_class(optimizer.get("_target_"))
    if wanted == AUTO:
        return on and kind in FUSED_BY_DEFAULT
    if not on:
        return False
    if device.type not in AUTO_ON["fused_optimizer"]:
        log.warning("perf.fused_optimizer=true: no fused kernels on %s; running without", device)
        return False
    return kind is not None and "fused" in inspect.signature(kind).parameters


def optimizer_class(target: Any) -> type | None:
    """The class a ``_target_`` names (None: not a class; the error is reported where it is
    built)."""
    from hydra.utils import get_class

    try:
        return get_class(target) if isinstance(target, str) else None
    except Exception:  # noqa: BLE001 - reported where the optimiser is built
        return None


def _switch(
    perf: Mapping[str, Any], key: str, device: torch.device, allow_auto: bool = True
) -> bool:
    value = perf.get(key, AUTO if allow_auto else False)
    if allow_auto and value == AUTO:
        return device.type in AUTO_ON[key]
    if not isinstance(value, bool):
        choices = "auto, true or false" if allow_auto else "true or false"
        raise UserError(f"perf.{key} must be {choices}; got {value!r}")
    return value


def check_precision(precision: Any, device_type: str) -> None:
    """UserError for a precision Lightning does not know, or one it would silently replace:
    fp16 AMP (``16``, ``16-mixed``) runs as bf16-mixed on a CPU."""
    if precision in (AUTO, None):
        return
    known = [str(p) for p in (*get_args(_PRECISION_INPUT_INT), *get_args(_PRECISION_INPUT_STR))]
    known += list(get_args(_PRECISION_INPUT_STR_ALIAS))
    if str(precision) not in known or isinstance(precision, bool | float):
        valid = ", ".join(dict.fromkeys([AUTO, *known]))
        raise UserError(f"unknown trainer.precision {precision!r}; valid: {valid}")
    if device_type == "cpu" and str(precision) in FP16_AMP:
        raise UserError(
            f"trainer.precision={precision} (fp16 AMP) is not supported on a CPU, where Lightning "
            "would run bf16-mixed instead; pass trainer.precision=bf16-mixed or 32-true"
        )


def _precision(precision: Any, device: torch.device, conv: bool) -> str:
    if precision not in (AUTO, None):
        check_precision(precision, device.type)
        return str(precision)
    if device.type == "cuda":
        return "bf16-mixed" if cuda_bf16(device) else "32-true"
    return "bf16-mixed" if conv and cpu_bf16() else "32-true"


def cuda_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (Ampere and later)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def cpu_bf16() -> bool:
    """Whether this CPU has AMX bf16 tiles, where oneDNN runs bf16 convolutions much faster than
    fp32 (AVX-512 bf16 alone is not measured to pay). torch exposes the check privately only."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


def has_conv2d(model: nn.Module) -> bool:
    """An image model in the sense of ``channels_last``: it holds a 2-D convolution."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_model(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D weights in NHWC (in place) when it is a conv net; else unchanged."""
    return model.to(memory_format=torch.channels_last) if has_conv2d(model) else model


def channels_last_input(x: Tensor) -> Tensor:
    """A batch of images (4-D) in NHWC; other batches unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class CompiledForward(Callback):
    """``torch.compile`` of the student's and the teacher's forward for the duration of a fit.

    The compiled forward is an instance attribute, so parameter names, checkpoints and feature
    hooks stay as they are, and it is compiled in the process that trains (after a DDP spawn).
    A ``TeacherEnsemble`` is not compiled: it runs its teachers on threads or side streams.
    ``cuda_graphs``: mode ``reduce-overhead``, each training step starting a new graph step.
    """

    def __init__(self, cuda_graphs: bool = False) -> None:
        self.cuda_graphs = cuda_graphs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        mode = "reduce-overhead" if self.cuda_graphs else None
        for model in compile_targets(pl_module):
            if "forward" not in vars(model):
                model.forward = torch.compile(model.forward, mode=mode)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for model in compile_targets(pl_module):
            vars(model).pop("forward", None)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()


def compile_targets(pl_module: L.LightningModule) -> list[nn.Module]:
    """The student, and the online teacher when it is one model (behind the prediction cache
    too: a ``CachedTeacher`` holds the ``FrozenTeacher`` that computes its misses)."""
    holder = getattr(pl_module, "teacher", None)
    holder = getattr(holder, "teacher", holder)
    teacher = getattr(holder, "model", None)
    targets = [pl_module.student]  # type: ignore[attr-defined]
    if isinstance(teacher, nn.Module) and not isinstance(teacher, TeacherEnsemble):
        targets.append(teacher)
    return targets
