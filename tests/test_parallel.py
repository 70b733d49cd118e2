"""PPP job scheduler: order, concurrency, LPT dispatch, failures, devices, threads, interrupts."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from hpmkd import parallel
from hpmkd.parallel import Job, JobResult, run_jobs

# Job functions: module level, so that spawned children can import them.


def square(x: int) -> int:
    return x * x


def sleep_span(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def started_at() -> float:
    return time.time()


def fail(message: str) -> None:
    raise ValueError(message)


def hard_exit(code: int) -> None:
    os._exit(code)


def env_value(name: str) -> str | None:
    return os.environ.get(name)


def leave_at_exit(marker: str) -> int:
    import atexit

    atexit.register(lambda: Path(marker).write_text("ran"))
    return 7


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable_value() -> object:
    return lambda: None


def environment(*names: str) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def write_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


def wait_for_file(path: str) -> None:
    deadline = time.time() + 60
    while not Path(path).exists() and time.time() < deadline:
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same slots on every machine: GPU slots are tested with a mocked count."""
    monkeypatch.setattr(parallel, "_cuda_device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_results_come_back_in_job_order_with_their_values():
    jobs = [Job(f"sq{x}", square, (x,), cost=c) for x, c in [(2, 1.0), (3, 9.0), (4, 5.0)]]
    results = run_jobs(jobs, workers=2)
    assert [r.name for r in results] == ["sq2", "sq3", "sq4"]
    assert [r.value for r in results] == [4, 9, 16]
    assert all(r.ok and r.error is None and r.seconds > 0 for r in results)
    assert {r.worker for r in results} <= {0, 1}


def test_kwargs_reach_the_job():
    (result,) = run_jobs([Job("kw", square, kwargs={"x": 5})], workers=1)
    assert result.value == 25


def _span(results: list[JobResult]) -> float:
    return max(r.value[1] for r in results) - min(r.value[0] for r in results)


def test_two_workers_run_two_jobs_at_once():
    results = run_jobs([Job(f"s{i}", sleep_span, (1.5,)) for i in range(2)], workers=2)
    (a_start, a_end), (b_start, b_end) = (r.value for r in results)
    assert a_start < b_end and b_start < a_end  # the sleeps overlap
    assert _span(results) < 2.6


def test_one_worker_runs_one_job_at_a_time():
    results = run_jobs([Job(f"s{i}", sleep_span, (1.5,)) for i in range(2)], workers=1)
    assert _span(results) >= 2.9


def test_a_raising_job_fails_alone():
    jobs = [
        Job("a", square, (1,)),
        Job("bad", fail, ("boom\nsecond line",)),
        Job("c", square, (3,)),
    ]
    results = run_jobs(jobs, workers=2)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "ValueError: boom second line"
    assert results[1].value is None
    assert [results[0].value, results[2].value] == [1, 9]


def test_a_dying_process_fails_alone():
    jobs = [Job("exit", hard_exit, (3,)), Job("ok", square, (2,)), Job("kill", kill_self)]
    results = run_jobs(jobs, workers=2)
    assert results[0].error == "exit code 3" and not results[0].ok
    assert results[1].ok and results[1].value == 4
    assert results[2].error.startswith("killed by signal 9") and not results[2].ok


def test_a_value_that_cannot_be_returned_fails_the_job():
    (result,) = run_jobs([Job("lambda", unpicklable_value)], workers=1)
    assert not result.ok and result.error.startswith("cannot return the value")


def test_jobs_start_longest_first_with_ties_in_job_order():
    costs = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 3.0}
    finished: list[str] = []
    jobs = [Job(name, started_at, cost=cost) for name, cost in costs.items()]
    results = run_jobs(jobs, workers=1, on_done=lambda r: finished.append(r.name))
    by_start = [r.name for r in sorted(results, key=lambda r: r.value)]
    assert by_start == ["b", "c", "d", "a"]
    assert finished == by_start


def test_on_done_is_called_once_per_job():
    seen: list[JobResult] = []
    jobs = [Job(f"j{i}", square, (i,)) for i in range(2)] + [Job("bad", hard_exit, (1,))]
    results = run_jobs(jobs, workers=2, on_done=seen.append)
    assert Counter(r.name for r in seen) == Counter(r.name for r in jobs)
    assert sorted(seen, key=lambda r: r.name) == sorted(results, key=lambda r: r.name)


def test_each_job_sees_its_slots_device():
    names = (parallel.DEVICE_ENV, "CUDA_VISIBLE_DEVICES")
    jobs = [Job(f"j{i}", environment, names) for i in range(2)]
    results = run_jobs(jobs, devices=["cpu", "mps"])
    for r in results:
        assert r.device == ["cpu", "mps"][r.worker]
        assert r.value[parallel.DEVICE_ENV] == r.device
    assert {r.worker for r in results} == {0, 1}
    assert all(r.value["CUDA_VISIBLE_DEVICES"] == "" for r in results if r.device == "cpu")


def test_gpu_slots_show_each_child_only_its_gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(parallel, "_cuda_device_count", lambda: 2)
    names = (parallel.DEVICE_ENV, "CUDA_VISIBLE_DEVICES")
    results = run_jobs([Job(f"j{i}", environment, names) for i in range(2)])
    for r in results:
        assert r.device == f"cuda:{r.worker}"
        assert r.value == {parallel.DEVICE_ENV: "cuda:0", "CUDA_VISIBLE_DEVICES": str(r.worker)}
    assert {r.worker for r in results} == {0, 1}
    assert {r.device for r in run_jobs([Job("one", square, (1,))], workers=1)} == {"cuda:0"}


def test_gpu_indices_follow_the_parents_visible_devices(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    (result,) = run_jobs([Job("j", environment, ("CUDA_VISIBLE_DEVICES",))], devices=["cuda:1"])
    assert result.value == {"CUDA_VISIBLE_DEVICES": "6"}
    with pytest.raises(ValueError, match="has 2 GPUs"):
        run_jobs([Job("j", square, (1,))], devices=["cuda:2"])


def test_default_cpu_slots_share_the_cores(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(parallel, "_cpu_count", lambda: 4)
    jobs = [Job(f"j{i}", environment, ("OMP_NUM_THREADS",)) for i in range(3)]
    results = run_jobs(jobs, threads_per_worker=2)
    assert {r.worker for r in results} == {0, 1}
    assert all(r.value == {"OMP_NUM_THREADS": "2"} and r.device is None for r in results)
    (one,) = run_jobs(jobs[:1], workers=1)
    assert one.value == {"OMP_NUM_THREADS": "4"}


@pytest.mark.slow
def test_torch_in_a_child_uses_threads_per_worker():
    results = run_jobs([Job("t", torch_threads)], workers=1, threads_per_worker=1)
    assert results[0].value == 1


def test_bad_arguments_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="at least 1"):
        run_jobs([Job("j", square, (1,))], workers=0)
    with pytest.raises(ValueError, match="not both"):
        run_jobs([Job("j", square, (1,))], workers=1, devices=["cpu"])
    with pytest.raises(Exception, match="lambda|pickle"):
        run_jobs([Job("j", lambda: None)], workers=1)
    assert run_jobs([], workers=1) == []


def test_an_interrupt_terminates_running_children(tmp_path: Path):
    pid_file = tmp_path / "pid"
    jobs = [
        Job("long", write_pid_and_sleep, (str(pid_file),), cost=2.0),
        Job("quick", wait_for_file, (str(pid_file),)),
    ]

    def interrupt(result: JobResult) -> None:
        raise KeyboardInterrupt

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_jobs(jobs, workers=2, on_done=interrupt)
    assert time.perf_counter() - start < 30
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_child_ends_after_its_exit_handlers(tmp_path: Path) -> None:
    """A child ends without the interpreter's teardown, but after its atexit handlers."""
    marker = tmp_path / "atexit"
    (result,) = run_jobs([Job("j", leave_at_exit, (str(marker),))], workers=1)
    assert result.ok and result.value == 7
    assert marker.read_text() == "ran"


def test_a_child_sees_the_environment_of_when_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork server started by an earlier call still hands each child today's environment."""
    run_jobs([Job("first", square, (2,))], workers=1)
    monkeypatch.setenv("HPMKD_TEST_MARK", "set after the first call")
    (result,) = run_jobs([Job("second", env_value, ("HPMKD_TEST_MARK",))], workers=1)
    assert result.value == "set after the first call"


def test_cpu_slots_fork_from_a_server_and_gpu_slots_spawn() -> None:
    jobs = [Job("j", square, (1,))]
    cpu = [parallel._Slot(0, None, {}), parallel._Slot(1, "cpu", {})]
    gpu = [parallel._Slot(0, "cuda:0", {})]
    if sys.platform.startswith("linux"):
        assert parallel._context(jobs, cpu).get_start_method() == "forkserver"
    assert parallel._context(jobs, gpu).get_start_method() == "spawn"
