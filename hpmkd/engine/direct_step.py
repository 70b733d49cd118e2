"""``optimizer.step()`` and ``zero_grad()`` of fused Adam/AdamW without torch.optim's wrappers.

For a model of a few thousand parameters, ``torch.optim.Adam(fused=True).step()`` spends about
two thirds of its time in Python around the fused kernel: the step-hook wrapper and its profiler
range, ``_use_grad``, the dynamo-disable wrapper, ``_init_group`` rebuilding the state lists, the
device/dtype grouping, and an lr scheduler's counting wrapper. ``direct_step`` returns a function
that calls the same kernels (``torch._fused_adam_`` / ``torch._fused_adamw_``) with the same
arguments, in the same order, under the same grad mode, so parameters and optimiser state are
bitwise those of ``optimizer.step()``; ``direct_zero_grad`` does the same for
``zero_grad(set_to_none=True)``.

Replicates torch 2.15's ``Adam.step`` / ``_fused_adam`` (``torch/optim/adam.py``) and
``Optimizer.zero_grad`` (``torch/optim/optimizer.py``); under another torch version
``direct_step`` returns None until the replication is checked against that version's source
(tests/test_direct_step.py fails until then). Whenever the replication could differ
(step hooks, a profiler, graph capture, a grad scaler, a patched ``step``, missing state, a new
set of parameters with gradients, changed flags), the call goes to ``optimizer.step()`` itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any

import torch
from torch import Tensor
from torch.optim import Adam, AdamW, Optimizer
from torch.optim.optimizer import (
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _to_scalar,
)

__all__ = ["direct_step", "direct_zero_grad"]

_grad_of = operator.attrgetter("grad")
_is_sparse = operator.attrgetter("is_sparse")
_profiler_enabled = torch._C._autograd._profiler_enabled
_grad_enabled = torch._C.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled
_DEVICE_TYPES = ({"cpu"}, {"cuda"})
_CHECKED_TORCH = "2.15"  # the torch version whose optim source this replicates


@dataclass(frozen=True)
class _Bucket:
    """One ``(device, dtype)`` group of a param group's parameters with gradients, as torch's
    ``Optimizer._group_tensors_by_device_and_dtype`` forms it: positions in the with-grad list
    (None: all of them, in order, so the lists pass through unchanged)."""

    device: torch.device
    indices: list[int] | None


@dataclass(frozen=True)
class _GroupPlan:
    """What the last ``optimizer.step()`` saw of one param group: which parameters (by id: the
    optimiser holds them, so ids are not reused) had gradients, and its buckets."""

    ids: tuple[int, ...]
    mask: tuple[bool, ...]
    all_have_grad: bool
    amsgrad: bool
    buckets: tuple[_Bucket, ...]


def _groups_qualify(optimizer: Optimizer) -> bool:
    """Whether every param group takes torch's fused, non-capturable, non-differentiable path
    with all parameters on one device type (cpu or cuda)."""
    if optimizer.defaults.get("differentiable", True):
        return False
    device_types: set[str] = set()
    for group in optimizer.param_groups:
        if (
            group.get("fused") is not True
            or group.get("capturable", True)
            or group.get("differentiable", True)
            or "decoupled_weight_decay" not in group
        ):
            return False
        device_types.update(p.device.type for p in group["params"])
    return device_types in _DEVICE_TYPES


def _step_hooks(optimizer: Optimizer) -> bool:
    """Whether any step hook, global or this optimiser's, is registered."""
    return bool(
        _global_optimizer_pre_hooks
        or _global_optimizer_post_hooks
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
    )


class _DirectAdam:
    """The direct step for one fused Adam/AdamW; ``step`` is the function handed out."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.plans: list[_GroupPlan] | None = None
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        # Adam.step's _accelerator_graph_capture_health_check raises while capturing with
        # capturable=False: such calls go to optimizer.step() to raise it.
        self.check_capture = accelerator is not None

    def _plan(self) -> list[_GroupPlan] | None:
        """Plans for every param group from the current gradients and state (just made by
        ``optimizer.step()``), or None when the optimiser no longer qualifies."""
        optimizer = self.optimizer
        if not _groups_qualify(optimizer):
            return None
        plans = []
        for group in optimizer.param_groups:
            params = group["params"]
            mask = tuple(p.grad is not None for p in params)
            with_grad = list(compress(params, mask))
            states = [optimizer.state.get(p) for p in with_grad]
            if not all(states):
                return None
            amsgrad = bool(group["amsgrad"])
            lists = [
                with_grad,
                [p.grad for p in with_grad],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                [s["step"] for s in states],
            ]
            grouped = Optimizer._group_tensors_by_device_and_dtype(lists, with_indices=True)
            identity = list(range(len(with_grad)))
            buckets = tuple(
                _Bucket(device, None if len(grouped) == 1 and indices == identity else indices)
                for (device, _), (_, indices) in grouped.items()
            )
            plans.append(_GroupPlan(tuple(map(id, params)), mask, all(mask), amsgrad, buckets))
        return plans

    def _torch_step(self, replan: bool) -> None:
        self.optimizer.step()
        if replan:
            self.plans = self._plan()

    def step(self) -> None:
        """``optimizer.step()``: the fused kernels called directly when the plan still holds."""
        optimizer = self.optimizer
        plans = self.plans
        attrs = optimizer.__dict__
        if (
            _step_hooks(optimizer)
            or _profiler_enabled()
            or attrs.get("grad_scale") is not None
            or attrs.get("found_inf") is not None
            or (self.check_capture and torch.accelerator.current_stream().is_capturing())
        ):
            self._torch_step(replan=False)
            return
        patched = attrs.get("step")
        lr_scheduler_wrapper = getattr(patched, "_wrapped_by_lr_sched", False)
        if patched is not None and not lr_scheduler_wrapper:
            self._torch_step(replan=False)
            return
        groups = optimizer.param_groups
        if plans is None or len(plans) != len(groups) or optimizer.defaults["differentiable"]:
            self._torch_step(replan=True)
            return

        # Gather every group's arguments before running any kernel: a mismatch in a later
        # group must leave the earlier ones unstepped for optimizer.step().
        state_get = optimizer.state.get
        calls = []
        for group, plan in zip(groups, plans, strict=True):
            params = group["params"]
            grads = list(map(_grad_of, params))
            if (
                tuple(map(operator.is_not, grads, repeat(None))) != plan.mask
                or tuple(map(id, params)) != plan.ids
                or group["fused"] is not True
                or group["capturable"]
                or group["differentiable"]
                or bool(group["amsgrad"]) != plan.amsgrad
            ):
                self._torch_step(replan=True)
                return
            if not plan.all_have_grad:
                params = list(compress(params, plan.mask))
                grads = list(compress(grads, plan.mask))
            if not params:
                continue
            states = list(map(state_get, params))
            if not all(states) or any(map(_is_sparse, grads)):
                self._torch_step(replan=True)
                return
            try:
                lists = (
                    params,
                    grads,
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["max_exp_avg_sq"] for s in states] if plan.amsgrad else [],
                    [s["step"] for s in states],
                )
            except KeyError:
                self._torch_step(replan=True)
                return
            calls.append((group, plan, lists))

        if lr_scheduler_wrapper:
            optimizer._opt_called = True  # what the scheduler's wrapper of step records
        previous = _grad_enabled()
        _set_grad_enabled(False)
        try:
            for group, plan, lists in calls:
                _fused_adam(group, plan, lists)
        finally:
            _set_grad_enabled(previous)


def _fused_adam(group: dict[str, Any], plan: _GroupPlan, lists: tuple[list[Tensor], ...]) -> None:
    """torch's ``_fused_adam`` for one param group, its bucketing precomputed."""
    beta1, beta2 = group["betas"]
    beta1 = _to_scalar(beta1)
    beta2 = _to_scalar(beta2)
    lr = group["lr"]
    weight_decay = group["weight_decay"]
    eps = group["eps"]
    maximize = group["maximize"]
    amsgrad = group["amsgrad"]
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    # torch hands a tensor lr not on the cpu to each device's kernel on that device.
    lr_dict = {lr.device: lr} if isinstance(lr, Tensor) and str(lr.device) != "cpu" else None
    for bucket in plan.buckets:
        if bucket.indices is None:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = lists
        else:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = (
                [tensors[i] for i in bucket.indices] if tensors else [] for tensors in lists
            )
        if lr_dict is not None and bucket.device not in lr_dict:
            lr_dict[bucket.device] = lr.to(device=bucket.device, non_blocking=True)
            lr = lr_dict[bucket.device]
        torch._foreach_add_(steps, 1)
        kernel(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            amsgrad=amsgrad,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
            grad_scale=None,
            found_inf=None,
        )


def direct_step(optimizer: Optimizer) -> Callable[[], None] | None:
    """A function doing exactly ``optimizer.step()`` for a fused Adam/AdamW, or None.

    It qualifies when ``type(optimizer)`` is exactly ``Adam`` or ``AdamW``, every param group has
    ``fused=True``, ``capturable=False`` and ``differentiable=False``, no step hook is
    registered, and all parameters sit on one device type (cpu or cuda). amsgrad, maximize,
    weight decay (coupled or decoupled), several param groups and a float or tensor ``lr`` are
    handled as torch handles them; hyperparameters are read at each call, so schedulers apply.

    The first call, and any call after the set of parameters with gradients changes or a
    parameter lacks state, runs ``optimizer.step()`` (torch creates the state) and re-plans;
    calls while a step hook, a profiler, graph capture or a grad scaler is active run
    ``optimizer.step()`` too.
    """
    if not torch.__version__.startswith(_CHECKED_TORCH + "."):
        return None
    if type(optimizer) not in (Adam, AdamW) or _step_hooks(optimizer):
        return None
    if not getattr(type(optimizer).step, "hooked", False) or not _groups_qualify(optimizer):
        return None
    patched = optimizer.__dict__.get("step")
    if patched is not None and not getattr(patched, "_wrapped_by_lr_sched", False):
        return None
    return _DirectAdam(optimizer).step


def direct_zero_grad(optimizer: Optimizer) -> Callable[[], None]:
    """A function doing exactly ``optimizer.zero_grad(set_to_none=True)``.

    ``Optimizer.zero_grad`` with ``set_to_none=True`` sets every parameter's gradient that is
    not None to None inside a profiler range; this skips the range (calls under a profiler go to
    ``zero_grad`` itself). For an optimiser that is not an instance of exactly a ``torch.optim``
    class using torch's own ``zero_grad``, returns ``optimizer.zero_grad``.
    """
    cls = type(optimizer)
    if (
        getattr(torch.optim, cls.__name__, None) is not cls
        or cls.zero_grad is not Optimizer.zero_grad
        or "zero_grad" in optimizer.__dict__
    ):
        return optimizer.zero_grad
    if not hasattr(optimizer, "_zero_grad_profile_name"):
        optimizer._patch_step_function()  # as zero_grad does for an unpickled optimiser

    def zero_grad() -> None:
        if _profiler_enabled():
            optimizer.zero_grad(set_to_none=True)
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad = None

    return zero_grad
