"""Ending a process without the interpreter's teardown.

After an ``hpmkd train`` has written everything, the interpreter's teardown (the modules of
torch, Lightning and Hydra, some 600k objects, and torch's C++ library destructors) took 1.6 s
before the process ended, in every CLI call and every sweep member's process. Results are
written atomically and closed by then; ``finish`` does the rest of a normal exit (threads,
atexit handlers, flushed streams) and ``os._exit`` skips the teardown.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def observed() -> bool:
    """Whether a profiler or a tracer (``python -m cProfile``, coverage) watches this process:
    they write their output after the program returns, so it must end as Python's would."""
    return sys.getprofile() is not None or sys.gettrace() is not None


def exit_without_teardown(status: int) -> NoReturn:
    """End the process with ``status`` after a normal exit's work, without the teardown (under
    a profiler or tracer: ``sys.exit``)."""
    if observed():
        sys.exit(status)
    os._exit(finish(status))


def exit_status(code: object) -> int:
    """The exit status of ``sys.exit(code)``, as Python gives it: None is 0, an int itself, and
    anything else is printed to stderr and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        print(code, file=sys.stderr)
    except Exception:  # noqa: BLE001 - stderr gone: Python stays silent too
        pass
    return 1


def finish(status: int) -> int:
    """What the interpreter does at exit short of its teardown: wait for non-daemon threads (and
    concurrent.futures' exit hooks), run the atexit handlers (logging.shutdown closes train.log;
    multiprocessing, wandb), flush stdout and stderr. Returns ``status``, or 120 where a flush
    fails, as Python; a reader gone (``hpmkd models | head``) costs no traceback."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not getattr(stream, "closed", False):
                stream.flush()
        except BrokenPipeError:
            status = 120
        except Exception as err:  # noqa: BLE001 - Python reports these and exits with 120
            status = 120
            if stream is sys.stdout:
                try:
                    print(f"Exception ignored flushing stdout: {err!r}", file=sys.stderr)
                    sys.stderr.flush()
                except Exception:  # noqa: BLE001
                    pass
    try:  # what native libraries printed through C's stdio (a pipe buffers it)
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # noqa: BLE001 - no C library by that name (Windows)
        pass
    return status
