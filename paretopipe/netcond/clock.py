"""The trace clock signal: how a run tells the replay when its measurement starts and ends.

A run under a trace condition sees the trace from t = 0 at its first counted batch's send
(after warm-up), so that every run of a configuration sees the same link at the same batch.
The source writes that instant, a ``time.monotonic()``, to a small JSON file (the *clock
file*) named in its network record (``config.network.extra.trace_clock``), and writes again
when its measurement ends. The follower that replays the trace
(:mod:`paretopipe.testbed.tracefollow`) polls the file. This works on the emulated testbed
because its devices are namespaces of one machine: they share the file system and the
monotonic clock. Real devices do not, and their NICs do not replay traces (the netem role
refuses them).

The file holds one JSON object, replaced atomically:
``{"run_id": ID, "seq": N, "event": "start", "t0": T}`` or ``{"run_id": ID, "seq": N,
"event": "stop", "at": T}``. ``seq`` grows with every signal of a process.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from paretopipe.errors import ConfigError

__all__ = ["check_clock_file", "read_signal", "write_signal"]

_SEQ = itertools.count(1)


def check_clock_file(path: str | Path) -> Path:
    """The clock file's path, once its directory is known to be writable (ConfigError if not)."""
    file = Path(path)
    if not file.parent.is_dir() or not os.access(file.parent, os.W_OK):
        raise ConfigError(f"trace clock file {file}: its directory is missing or not writable; "
                          "shape the trace condition with `paretopipe testbed shape` first")
    return file


def write_signal(path: str | Path, run_id: str, event: str, t: float) -> None:
    """Tell the follower that measurement of ``run_id`` starts (``event="start"``, ``t`` = the
    first counted send) or ended (``"stop"``)."""
    if event not in ("start", "stop"):
        raise ValueError(f"unknown clock event {event!r}")
    file = Path(path)
    doc = {"run_id": run_id, "seq": next(_SEQ), "pid": os.getpid(), "event": event,
           ("t0" if event == "start" else "at"): t}
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, file)


def read_signal(path: str | Path) -> dict | None:
    """The last signal written, or None (no file yet, or one being replaced)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("event") in ("start", "stop") else None
