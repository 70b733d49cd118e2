"""The `hpmkd` command ends with os._exit after a normal exit's work (console_main): exit
statuses, complete piped output, atexit handlers and non-daemon threads, a finished run's files;
bugs keep Python's own exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import TINY

BIN = Path(sys.executable).parent

# `hpmkd <args>` through console_main, after an atexit handler and a non-daemon thread that each
# leave a file, and after ``{body}`` (which may replace a command)
_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
import hpmkd.cli as cli
marker = Path(sys.argv.pop(1))
atexit.register(lambda: marker.with_suffix(".atexit").write_text("ran"))
def late():
    time.sleep(0.2)
    marker.with_suffix(".thread").write_text("ran")
threading.Thread(target=late).start()
{body}
cli.console_main()
"""


def _env(tmp_path: Path) -> dict[str, str]:
    """A buffered stdout (no PYTHONUNBUFFERED), so that what the exit flushes is checked too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return env | {"HPMKD_CACHE": str(tmp_path / "cache"), "HPMKD_OUTPUTS": str(tmp_path / "out")}


def _probe(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", _PROBE.format(body=body), str(tmp_path / "marker"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path), timeout=120)


def _ran(tmp_path: Path) -> list[str]:
    return sorted(p.suffix for p in tmp_path.glob("marker.*"))


@pytest.mark.parametrize("module", [True, False], ids=["python -m hpmkd.cli", "hpmkd script"])
def test_version_and_unknown_command(tmp_path: Path, module: bool) -> None:
    if not module and not (BIN / "hpmkd").exists():
        pytest.skip("needs the installed hpmkd script")
    hpmkd = [sys.executable, "-m", "hpmkd.cli"] if module else [str(BIN / "hpmkd")]
    env = _env(tmp_path)
    done = subprocess.run([*hpmkd, "--version"], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"hpmkd {version('hpmkd')}\n", "")
    done = subprocess.run([*hpmkd, "nope"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "hpmkd: error: unknown command 'nope'; valid: train, models, store, report, acm, "
        "export, bench"
    ]


def test_models_table_is_complete_when_piped(tmp_path: Path, capsys) -> None:
    from hpmkd.cli import main

    done = subprocess.run(
        [sys.executable, "-m", "hpmkd.cli", "models"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with pytest.raises(SystemExit) as stop:
        main(["models"])
    assert stop.value.code == 0
    assert done.stdout == capsys.readouterr().out


def test_atexit_handlers_threads_and_large_output(tmp_path: Path) -> None:
    lines = 100_000  # about 600 kB: more than any pipe and stdout buffer hold
    body = f"cli.COMMANDS['models'] = lambda args: print(*range({lines}), sep='\\n') or 3"
    done = _probe(tmp_path, body, "models")
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [str(i) for i in range(lines)]
    assert _ran(tmp_path) == [".atexit", ".thread"]


def test_exit_with_a_message(tmp_path: Path) -> None:
    done = _probe(tmp_path, "cli.COMMANDS['models'] = lambda args: 'went wrong'", "models")
    assert (done.returncode, done.stderr) == (1, "went wrong\n")
    assert _ran(tmp_path) == [".atexit", ".thread"]


@pytest.mark.parametrize(
    ("error", "status"), [("RuntimeError", 1), ("KeyboardInterrupt", -signal.SIGINT)]
)
def test_a_bug_keeps_pythons_exit(tmp_path: Path, error: str, status: int) -> None:
    body = f"def boom(args):\n    raise {error}('bug')\ncli.COMMANDS['models'] = boom"
    done = _probe(tmp_path, body, "models")
    assert done.returncode == status, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith(f"{error}: bug")
    assert _ran(tmp_path) == [".atexit", ".thread"]


def test_a_reader_gone_costs_no_traceback(tmp_path: Path) -> None:
    """Output still buffered at exit, the pipe's reader gone: status 120 as Python's, silent."""
    body = "cli.COMMANDS['models'] = lambda args: print('table') or sys.stdin.readline() and 0"
    command = [sys.executable, "-c", _PROBE.format(body=body), str(tmp_path / "marker"), "models"]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(tmp_path),
    )  # fmt: skip
    proc.stdout.close()  # the reader goes before the probe writes anything to the pipe
    _, err = proc.communicate("go\n", timeout=120)
    assert (proc.returncode, err) == (120, "")
    assert _ran(tmp_path) == [".atexit", ".thread"]


@pytest.mark.slow
def test_a_run_leaves_its_log_and_results_complete(tmp_path: Path) -> None:
    if not (BIN / "hpmkd").exists():
        pytest.skip("needs the installed hpmkd script")
    overrides = ["+strategy=kd", "teacher=mlp_small", "recipe.epochs=1", *TINY]
    done = subprocess.run(
        [BIN / "hpmkd", "train", *overrides],
        capture_output=True, text=True, env=_env(tmp_path), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (results_file,) = (tmp_path / "out").rglob("results.json")
    # the last thing printed (rich wraps the long path)
    assert done.stdout.replace("\n", "").endswith(f"results: {results_file}")
    assert json.loads(results_file.read_text())["status"] == "completed"
    log = (results_file.parent / "train.log").read_text()
    assert log.endswith("\n")
    # the run's last log line: the teacher prediction cache's count, written after the fit
    assert "teacher cache: 0 hits, 1293 misses" in log.splitlines()[-1]


def test_a_profiler_still_writes_its_output(tmp_path: Path) -> None:
    """cProfile writes its file after the program returns: under it the exit is Python's own."""
    profile = tmp_path / "hpmkd.prof"
    command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "hpmkd.cli", "--version"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"hpmkd {version('hpmkd')}"
    assert profile.stat().st_size > 0
