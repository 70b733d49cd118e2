"""K trained teachers behind one module: the teacher of multi-teacher distillation (AWMT).

``TeacherEnsemble(x)`` returns the mean of the teachers' logits, ``(B, C)``, so everything that
expects one teacher (class-count check, accuracy) works unchanged; the stacked logits
``(B, K, C)``, in the order the teachers were given, pass through the ``stack`` submodule and are
the feature ``teacher_logits``. ``indexed(x, index)`` is the same with the sample indices of the
batch: a member that looks its outputs up by sample (``indexed``, a scikit-learn teacher's
out-of-fold soft labels) reads them, the others run on ``x``.

Teachers of one architecture (same class, layer settings and weight shapes, no hooks) run as one
batched forward (``batched=True``): their weights are stacked (``torch.func.stack_module_state``)
and one ``vmap`` of a ``functional_call`` evaluates all of them; convolutions become one grouped
convolution. This holds while the teachers are frozen: in eval mode (BatchNorm reads its running
statistics) and, when grad mode is on, with no parameter that requires grad (gradients must reach
the teachers' own parameters). Otherwise, and for teachers of their own architecture, each
teacher runs alone. The stacked weights are read at the first forward on a device or dtype
(frozen teachers: their weights do not change afterwards) and take memory once more.
At that first forward the batched outputs are compared with the one-by-one outputs; where they
disagree, or vmap cannot run the model, the group falls back to one-by-one for good, with a
warning: batching never changes what the ensemble computes beyond float rounding.

Concurrency (the parallel pipeline, METHODS.md 2.5) with ``concurrent=True`` and several groups:
- CUDA: one side stream per group, joined back into the current stream before stacking.
- CPU: one Python thread per group (PyTorch ops release the GIL). ``torch.jit.fork`` is not
  used: in eager mode it runs the function synchronously (and is deprecated), so it would not
  overlap anything. Grad mode and CPU autocast are thread-local and are passed to the threads.
Both paths give the same outputs as ``concurrent=False``; whether they are faster depends on
how busy the device already is and is measured, not assumed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from hpmkd.errors import UserError

log = logging.getLogger("hpmkd")

Group = tuple[int, ...]  # positions of teachers in the ensemble
Job = Callable[[Tensor], list[Tensor]]  # the logits of one group's teachers, in group order


class TeacherEnsemble(nn.Module):
    """Trained teachers (any architectures, same classes) run on the same input."""

    def __init__(
        self, teachers: Sequence[nn.Module], concurrent: bool = True, batched: bool = True
    ) -> None:
        super().__init__()
        if not teachers:
            raise UserError("a teacher ensemble needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.stack = nn.Identity()
        self.concurrent = concurrent
        self.batched = batched
        self.groups = architecture_groups(teachers)
        self._stacked: dict[Group, StackedTeachers] = {}
        self._unbatchable: set[Group] = set()
        self.model_name = f"ensemble({','.join(_label(t) for t in teachers)})"
        self.feature_points = {"teacher_logits": ("stack", "output"), "input": ("", "input")}

    @property
    def batched_groups(self) -> list[Group]:
        """The groups whose teachers run as one batched forward (once they have run)."""
        return [group for group in self.groups if group in self._stacked]

    def forward(self, x: Tensor) -> Tensor:
        return self.indexed(x, None)

    def indexed(self, x: Tensor, index: Tensor | None) -> Tensor:
        """The mean logits of the teachers on the batch ``x`` of samples ``index``."""
        groups, jobs = self._jobs(x, index)
        if not self.concurrent or len(jobs) == 1:
            outputs = [job(x) for job in jobs]
        elif x.is_cuda:
            outputs = self._run_on_streams(jobs, x)
        else:
            outputs = self._run_in_threads(jobs, x)
        logits = _in_teacher_order(groups, outputs)
        self._check_classes(logits)
        return self.stack(torch.stack(logits, dim=1)).mean(dim=1)

    def _jobs(self, x: Tensor, index: Tensor | None) -> tuple[list[Group], list[Job]]:
        """One job per batched group and per teacher that runs alone."""
        groups: list[Group] = []
        jobs: list[Job] = []
        for group in self.groups:
            stacked = self._stacked_for(group, x) if self.batched and len(group) > 1 else None
            if stacked is not None:
                groups.append(group)
                jobs.append(lambda x, stacked=stacked: list(stacked(x).unbind(0)))
                continue
            for k in group:
                groups.append((k,))
                jobs.append(lambda x, teacher=self.teachers[k]: [_member(teacher, x, index)])
        return groups, jobs

    def _stacked_for(self, group: Group, x: Tensor) -> StackedTeachers | None:
        """The group's stacked weights, built (and checked) here on the calling stream and
        thread; None where the group runs one by one."""
        members = [self.teachers[k] for k in group]
        if group in self._unbatchable or not frozen(members):
            return None
        stacked = self._stacked.get(group)
        if stacked is not None and stacked.matches(members[0]):
            return stacked
        reason = None
        try:
            stacked = StackedTeachers(members)
            if not stacked.agrees(members, x):
                reason = "batched outputs differ from one-by-one outputs"
        except RuntimeError as err:  # an operation vmap cannot batch
            reason = " ".join(str(err).split())[:200]
        if reason is not None:
            log.warning(
                "teachers %s run one by one, not batched: %s",
                ", ".join(f"{k} '{_label(self.teachers[k])}'" for k in group), reason,
            )  # fmt: skip
            self._unbatchable.add(group)
            return None
        self._stacked[group] = stacked
        return stacked

    def _run_on_streams(self, jobs: list[Job], x: Tensor) -> list[list[Tensor]]:
        current = torch.cuda.current_stream(x.device)
        streams = [torch.cuda.Stream(x.device) for _ in jobs]
        outputs = []
        for job, stream in zip(jobs, streams, strict=True):
            stream.wait_stream(current)  # x is ready
            with torch.cuda.stream(stream):
                outputs.append(job(x))
        for stream, outs in zip(streams, outputs, strict=True):
            current.wait_stream(stream)
            for out in outs:
                # allocated on the side stream, used on the current one: keep its memory until then
                out.record_stream(current)
        return outputs

    def _run_in_threads(self, jobs: list[Job], x: Tensor) -> list[list[Tensor]]:
        grad = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")

        def run(job: Job) -> list[Tensor]:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype, enabled=autocast):
                return job(x)

        with ThreadPoolExecutor(len(jobs)) as pool:
            return list(pool.map(run, jobs))

    def _check_classes(self, logits: list[Tensor]) -> None:
        counts = [out.shape[-1] for out in logits]
        if len(set(counts)) > 1:
            found = ", ".join(
                f"teacher {k} '{_label(t)}': {n} classes"
                for k, (t, n) in enumerate(zip(self.teachers, counts, strict=True))
            )
            raise UserError(f"the teachers of an ensemble must predict the same classes; {found}")

    def __getstate__(self) -> dict[str, Any]:
        # stacked weights are rebuilt where the ensemble runs (a spawned DDP worker, a device)
        return self.__dict__ | {"_stacked": {}}


class StackedTeachers:
    """Teachers of one architecture as one vmapped functional forward over stacked weights.

    Returns ``(K, B, C)``: the teachers' logits in the order given. The weights are detached
    copies, so nothing here reaches back into the teachers' parameters.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        params, buffers = stack_module_state(list(members))
        self.params = {name: p.detach() for name, p in params.items()}
        self.buffers = buffers
        self.skeleton = copy.deepcopy(members[0]).to("meta")  # the architecture, no weights

    def __call__(self, x: Tensor) -> Tensor:
        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(self.skeleton, (params, buffers), (x,))

        return vmap(one, in_dims=(0, 0, None))(self.params, self.buffers, x)

    def matches(self, first: nn.Module) -> bool:
        """The stack is of the teachers as they are now placed (device, dtype)."""
        mine, theirs = next(iter(self.params.values())), next(first.parameters())
        return mine.device == theirs.device and mine.dtype == theirs.dtype

    @torch.no_grad()
    def agrees(self, members: Sequence[nn.Module], x: Tensor) -> bool:
        """The batched logits equal the one-by-one logits up to float rounding."""
        expected = torch.stack([teacher(x) for teacher in members])
        batched = self(x)
        if batched.shape != expected.shape:
            return False
        tolerance = _tolerance(expected) * float(expected.abs().amax().clamp_min(1.0))
        return float((batched.float() - expected.float()).abs().amax()) <= tolerance


def _tolerance(expected: Tensor) -> float:
    """Relative difference allowed between two orders of float rounding: fp32, TF32 on CUDA
    (cuDNN's default for convolutions), half precision."""
    if expected.dtype not in (torch.float32, torch.float64):
        return 5e-2
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return 1e-2 if expected.is_cuda and tf32 else 1e-3


def architecture_groups(teachers: Sequence[nn.Module]) -> list[Group]:
    """Positions of teachers that can share one batched forward, groups in order of their first
    member; a teacher with hooks, or without parameters, is a group of its own."""
    groups: dict[Any, list[int]] = {}
    for k, teacher in enumerate(teachers):
        key = _architecture(teacher) if _batchable(teacher) else ("alone", k)
        groups.setdefault(key, []).append(k)
    return [tuple(members) for members in groups.values()]


def _in_teacher_order(groups: list[Group], outputs: list[list[Tensor]]) -> list[Tensor]:
    by_position = {
        k: out
        for group, group_out in zip(groups, outputs, strict=True)
        for k, out in zip(group, group_out, strict=True)
    }
    return [by_position[k] for k in sorted(by_position)]


def frozen(members: Sequence[nn.Module]) -> bool:
    """In eval mode, and no gradient to track into their own parameters."""
    if any(m.training for m in members):
        return False
    return not torch.is_grad_enabled() or not any(
        p.requires_grad for m in members for p in m.parameters()
    )


def _architecture(model: nn.Module) -> tuple:
    """Class, layer settings (the module repr) and the names, shapes and dtypes of its tensors."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (
        type(model),
        _label(model),
        repr(model),
        tuple((name, tuple(t.shape), t.dtype) for name, t in tensors),
    )


def _batchable(model: nn.Module) -> bool:
    """Has parameters and no module hooks (the batched forward would not run them per teacher)."""
    hooked = any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()
    )
    return not hooked and next(model.parameters(), None) is not None


def _member(teacher: nn.Module, x: Tensor, index: Tensor | None) -> Tensor:
    indexed = getattr(teacher, "indexed", None)
    return teacher(x) if index is None or indexed is None else indexed(x, index)


def _label(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)
