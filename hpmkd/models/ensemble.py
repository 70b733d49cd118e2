"""K trained teachers behind one module: the teacher of multi-teacher distillation (AWMT).

``TeacherEnsemble(x)`` returns the mean of the teachers' logits, ``(B, C)``, so everything that
expects one teacher (class-count check, accuracy) works unchanged; the stacked logits
``(B, K, C)`` pass through the ``stack`` submodule and are the feature ``teacher_logits``.

Concurrency (the parallel pipeline, METHODS.md 2.5) with ``concurrent=True`` and K > 1:
- CUDA: one side stream per teacher, joined back into the current stream before stacking.
- CPU: one Python thread per teacher (PyTorch ops release the GIL). ``torch.jit.fork`` is not
  used: in eager mode it runs the function synchronously (and is deprecated), so it would not
  overlap anything. Grad mode and CPU autocast are thread-local and are passed to the threads.
Both paths give the same outputs as ``concurrent=False``; whether they are faster depends on
how busy the device already is and is measured, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from hpmkd.errors import UserError


class TeacherEnsemble(nn.Module):
    """Trained teachers (any architectures, same classes) run on the same input."""

    def __init__(self, teachers: Sequence[nn.Module], concurrent: bool = True) -> None:
        super().__init__()
        if not teachers:
            raise UserError("a teacher ensemble needs at least one teacher")
        self.teachers = nn.ModuleList(teachers)
        self.stack = nn.Identity()
        self.concurrent = concurrent
        self.model_name = f"ensemble({','.join(_label(t) for t in teachers)})"
        self.feature_points = {"teacher_logits": ("stack", "output"), "input": ("", "input")}

    def forward(self, x: Tensor) -> Tensor:
        if not self.concurrent or len(self.teachers) == 1:
            logits = [teacher(x) for teacher in self.teachers]
        elif x.is_cuda:
            logits = self._run_on_streams(x)
        else:
            logits = self._run_in_threads(x)
        self._check_classes(logits)
        return self.stack(torch.stack(logits, dim=1)).mean(dim=1)

    def _run_on_streams(self, x: Tensor) -> list[Tensor]:
        current = torch.cuda.current_stream(x.device)
        streams = [torch.cuda.Stream(x.device) for _ in self.teachers]
        logits = []
        for teacher, stream in zip(self.teachers, streams, strict=True):
            stream.wait_stream(current)  # x is ready
            with torch.cuda.stream(stream):
                logits.append(teacher(x))
        for stream, out in zip(streams, logits, strict=True):
            current.wait_stream(stream)
            # allocated on the side stream, used on the current one: keep its memory until then
            out.record_stream(current)
        return logits

    def _run_in_threads(self, x: Tensor) -> list[Tensor]:
        grad = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")

        def run(teacher: nn.Module) -> Tensor:
            with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype, enabled=autocast):
                return teacher(x)

        with ThreadPoolExecutor(len(self.teachers)) as pool:
            return list(pool.map(run, self.teachers))

    def _check_classes(self, logits: list[Tensor]) -> None:
        counts = [out.shape[-1] for out in logits]
        if len(set(counts)) > 1:
            found = ", ".join(
                f"teacher {k} '{_label(t)}': {n} classes"
                for k, (t, n) in enumerate(zip(self.teachers, counts, strict=True))
            )
            raise UserError(f"the teachers of an ensemble must predict the same classes; {found}")


def _label(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)
