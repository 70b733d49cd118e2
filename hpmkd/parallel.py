"""Parallel Processing Pipeline (PPP, METHODS.md section 2 item 5): independent jobs, run at once.

Each job runs in a fresh process (forked from a server that imported the jobs' modules once,
on CPU slots; started with ``spawn`` with a GPU), so a job that raises, exits, segfaults or is
killed for memory becomes one failed :class:`JobResult` while the others go on, and CUDA is never
forked. Jobs are dispatched longest first (largest ``cost``) to whichever worker slot is
free: LPT list scheduling. A slot is a device (one GPU each; the child sees only that GPU) or a
CPU share of ``threads_per_worker`` threads. ``workers=1`` uses the same mechanism, one child at a
time, so sequential and concurrent wall times compare like for like.

The child finds its device in the environment variable ``HPMKD_DEVICE`` ("cuda:0" for a GPU slot,
whichever GPU it is; absent on a plain CPU slot).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from hpmkd.process_exit import exit_without_teardown

DEVICE_ENV = "HPMKD_DEVICE"
_THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_KILL_AFTER_S = 5.0


@dataclass
class Job:
    """``fn(*args, **kwargs)`` in a child process; ``fn`` must be a module-level function."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    cost: float = 1.0  # an estimate used only for ordering: larger runs first


@dataclass
class JobResult:
    name: str
    ok: bool
    value: Any  # fn's return value when ok, else None
    error: str | None  # one line: "Type: message", "exit code N" or "killed by signal N (SIG...)"
    seconds: float  # wall time from process start to its end, interpreter start-up included
    worker: int  # index of the slot that ran the job
    device: str | None  # the slot's device as given ("cuda:1"), None for a plain CPU slot


@dataclass
class _Slot:
    index: int
    device: str | None
    env: dict[str, str]


@dataclass
class _Running:
    job: int
    slot: _Slot
    process: mp.process.BaseProcess
    conn: Connection
    started: float
    message: tuple[bool, Any] | None = None
    conn_open: bool = True


def run_jobs(
    jobs: Sequence[Job],
    *,
    workers: int | None = None,
    devices: Sequence[str] | None = None,
    threads_per_worker: int | None = None,
    on_done: Callable[[JobResult], None] | None = None,
) -> list[JobResult]:
    """Run ``jobs`` concurrently; the results come back in the order of ``jobs``.

    Slots: with ``devices``, one per entry (repeat an entry to share a device; ``workers`` must
    then be None). Otherwise one per visible CUDA GPU, at most ``workers`` of them; without GPUs,
    ``workers`` CPU slots. CPU defaults: neither given, one single-threaded worker per core; one
    given, the other is the core count divided by it. GPU slots get the cores shared out. A child
    gets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``threads_per_worker`` (and
    ``torch.set_num_threads`` if torch is already loaded); a "cpu" slot hides the GPUs.

    A failed job is one ``ok=False`` result; the others go on. ``on_done`` is called in this
    process as each job finishes. An interrupt (or an error in ``on_done``) terminates the
    children still running.
    """
    slots = _make_slots(workers, devices, threads_per_worker)
    payloads = [pickle.dumps((job.fn, job.args, job.kwargs)) for job in jobs]
    pending = deque(sorted(range(len(jobs)), key=lambda i: -jobs[i].cost))
    free = deque(slots)
    running: list[_Running] = []
    results: list[JobResult | None] = [None] * len(jobs)
    ctx = _context(jobs, slots)
    try:
        while pending or running:
            while pending and free:
                running.append(_start(ctx, pending.popleft(), free.popleft(), payloads))
            for run in _wait_for_exits(running):
                running.remove(run)
                free.append(run.slot)
                result = _result(jobs[run.job].name, run)
                results[run.job] = result
                if on_done is not None:
                    on_done(result)
    finally:
        _stop(running)
    return results  # type: ignore[return-value]


def _context(jobs: Sequence[Job], slots: list[_Slot]) -> Any:
    """How children start: on Linux CPU slots, forked from a server process that imported the
    jobs' modules once (torch, Lightning: 5-6 s a process), each job still in a fresh process of
    its own; with a GPU slot spawned (a fork must never inherit a CUDA state), and elsewhere too
    (macOS's system libraries are not safe to fork after import)."""
    cpu_only = all(slot.device in (None, "cpu") for slot in slots)
    if not cpu_only or not sys.platform.startswith("linux"):
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(sorted({job.fn.__module__ for job in jobs}))  # once per process
    return ctx


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def _make_slots(
    workers: int | None, devices: Sequence[str] | None, threads: int | None
) -> list[_Slot]:
    for name, value in (("workers", workers), ("threads_per_worker", threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if devices is not None:
        if workers is not None:
            raise ValueError("give workers or devices, not both")
        if not devices:
            raise ValueError("devices is empty")
        chosen: list[str | None] = list(devices)
    elif gpus := _cuda_device_count():
        chosen = [f"cuda:{i}" for i in range(min(gpus, workers or gpus))]
    else:
        if workers is None:
            workers = max(1, _cpu_count() // (threads or 1))
        chosen = [None] * workers
    threads = threads or max(1, _cpu_count() // len(chosen))
    return [_Slot(i, device, _slot_env(device, threads)) for i, device in enumerate(chosen)]


def _slot_env(device: str | None, threads: int) -> dict[str, str]:
    env = dict.fromkeys(_THREAD_ENVS, str(threads))
    if device is None:
        return env
    kind, _, index = device.partition(":")
    if kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = _physical_gpu(int(index or 0))
        env[DEVICE_ENV] = "cuda:0"
    else:
        if kind == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        env[DEVICE_ENV] = device
    return env


def _physical_gpu(index: int) -> str:
    """ "cuda:N" counts the GPUs this process sees; CUDA_VISIBLE_DEVICES may already narrow them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index >= len(ids):
        raise ValueError(f"cuda:{index}: CUDA_VISIBLE_DEVICES={visible!r} has {len(ids)} GPUs")
    return ids[index]


def _start(ctx: Any, job: int, slot: _Slot, payloads: list[bytes]) -> _Running:
    receiver, sender = ctx.Pipe(duplex=False)
    # the environment as it is now: a fork server's children inherit the server's, from when it
    # started
    env = {**os.environ, **slot.env}
    process = ctx.Process(
        target=_child_main, args=(sender, payloads[job], env), name=f"hpmkd-ppp-{slot.index}"
    )
    started = time.perf_counter()
    process.start()
    sender.close()  # the child holds the only write end: its death reads as EOF here
    return _Running(job, slot, process, receiver, started)


def _child_main(conn: Connection, payload: bytes, env: dict[str, str]) -> None:
    # The environment is set before the payload is unpickled, because unpickling imports the
    # job's module, which may import torch and read the thread and GPU settings.
    os.environ.clear()
    os.environ.update(env)
    try:
        fn, args, kwargs = pickle.loads(payload)
        # torch imported later reads OMP_NUM_THREADS; one imported before the environment was
        # set (by the parent's __main__, which spawn re-imports) is told directly.
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(env[_THREAD_ENVS[0]]))
        message: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except Exception as err:
        traceback.print_exc()
        message = (False, _describe(err))
    try:
        conn.send(message)
    except Exception as err:  # the return value does not pickle
        conn.send((False, f"cannot return the value: {_describe(err)}"))
    conn.close()
    exit_without_teardown(0)  # the parent has the result; its slot is free 1.6 s sooner


def _wait_for_exits(running: list[_Running]) -> list[_Running]:
    """Block until at least one child has exited, reading results as they arrive."""
    while True:
        conns = [run.conn for run in running if run.conn_open]
        ready = set(wait(conns + [run.process.sentinel for run in running]))
        for run in running:
            if run.conn in ready:
                _read(run)
        exited = [run for run in running if run.process.sentinel in ready]
        if exited:
            for run in exited:
                if run.conn_open and run.conn.poll():
                    _read(run)
                run.process.join()
                run.conn.close()
            return exited


def _read(run: _Running) -> None:
    try:
        run.message = run.conn.recv()
    except EOFError:  # the child died before it could send
        pass
    except Exception as err:  # the value does not unpickle here
        run.message = (False, f"cannot read the value: {_describe(err)}")
    run.conn_open = False


def _result(name: str, run: _Running) -> JobResult:
    seconds = time.perf_counter() - run.started
    ok, payload = run.message or (False, _exit_error(run.process.exitcode))
    return JobResult(
        name=name,
        ok=ok,
        value=payload if ok else None,
        error=None if ok else payload,
        seconds=seconds,
        worker=run.slot.index,
        device=run.slot.device,
    )


def _exit_error(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"killed by signal {-code}"


def _describe(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _stop(running: list[_Running]) -> None:
    """Terminate children still running (an interrupt or an error in ``on_done``)."""
    for run in running:
        run.process.terminate()
    for run in running:
        run.process.join(_KILL_AFTER_S)
        if run.process.is_alive():
            run.process.kill()
            run.process.join()
        run.conn.close()
