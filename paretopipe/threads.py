"""The threads the package starts, and how they end before the process does.

Every thread the runtime and the transports start comes from :func:`spawn`, which remembers it.
Each owner stops and joins its own threads when it closes (:func:`join`, with a bounded wait).
At the end of a command, :func:`settle` waits a bounded time for any that are still running.

Why it matters: a thread still inside torch code while the interpreter shuts down is ended by
CPython with ``pthread_exit``, which unwinds through torch's C++ frames that release the GIL and
aborts the process with "terminate called without an active exception" (pytorch/pytorch#38228),
after the run itself succeeded. So no thread of ours may be alive when the interpreter
finalizes: :func:`exit_code` ends the process without finalizing (``os._exit``, after flushing
output) if one is still alive after the bounded wait, and says which.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

#: How long a command waits at its end for the threads it started.
SETTLE_S = 10.0

_started: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_lock = threading.Lock()


def spawn(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread and remember it. Daemon, so that one stuck in a system call can
    never keep the process alive; remembered, so that it is joined before the process ends."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with _lock:
        _started.add(thread)
    thread.start()
    return thread


def join(threads: Iterable[threading.Thread | None], timeout_s: float) -> list[str]:
    """Join `threads` within `timeout_s` in all; the names of those still alive after it.
    The calling thread is skipped (a thread cannot join itself)."""
    deadline = time.monotonic() + timeout_s
    me = threading.current_thread()
    alive = []
    for t in threads:
        if t is None or t is me:
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            alive.append(t.name)
    return alive


def running() -> list[threading.Thread]:
    """The threads started by :func:`spawn` that are still alive."""
    with _lock:
        return [t for t in _started if t.is_alive()]


def settle(timeout_s: float = SETTLE_S) -> list[str]:
    """Wait up to `timeout_s` for every thread started by :func:`spawn`; the names still alive."""
    return join(running(), timeout_s)


def exit_code(code: int, *, timeout_s: float = SETTLE_S) -> int:
    """Return `code` for a normal exit once every thread of ours has ended. If one is still
    alive after `timeout_s`, flush the output and end the process now with `code`, without
    interpreter finalization, so that a thread in torch code cannot abort it afterwards."""
    lingering = settle(timeout_s)
    if not lingering:
        return code
    log.warning("threads still running after %g s at exit: %s; ending the process without interpreter "
                "shutdown (exit status %d)", timeout_s, ", ".join(sorted(lingering)), code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
