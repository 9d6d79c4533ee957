"""Stop means stop: SIGINT and SIGTERM turn into :class:`Interrupted` in a sweep's runner, the run
in progress gets a result file marked failed with the error ``interrupted ...`` (never ok, so the
resume rule redoes it), and SIGHUP is ignored.

Two ways a sweep's controller goes away, told apart (docs/ansible.md, *Stopping a sweep*):

- **the user asked to stop** (Ctrl-C, SIGTERM, ``playbooks/stop.yml``): the runner gets SIGTERM
  (or SIGINT), stops the run in progress and ends; the workers are stopped by PID;
- **the controller vanished** (its terminal or ssh session closed): the runner never hears of it
  (it runs in the background, detached, and ignores SIGHUP) and works through its round.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Interrupted", "raise_on_signals", "mark_interrupted", "preload", "interrupted_error", "RESUME_HINT"]

RESUME_HINT = "run the same command again to resume (finished runs are kept, the interrupted one is redone)"


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: not an error to catch with Exception
    """The user asked the sweep to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupted_error(signum: int) -> str:
    return f"interrupted by {signal.Signals(signum).name} (the user stopped the sweep); {RESUME_HINT}"


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises :class:`Interrupted` (later ones are
    ignored, so that the cleanup finishes) and SIGHUP is ignored; the old handlers come back after."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.getsignal(s) for s in sigs}

    def on_signal(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def preload() -> None:
    """Import what a run imports on its way (torch, torchvision, the runtime), so that the
    :class:`Interrupted` a signal raises never lands inside an import: a half-imported torch
    cannot even write the interrupted run's file."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import paretopipe.environment  # noqa: F401
    import paretopipe.models  # noqa: F401
    import paretopipe.runtime.source  # noqa: F401
    import paretopipe.splitting  # noqa: F401
    import paretopipe.transport  # noqa: F401


def mark_interrupted(cfg: Any, path: Path, exc: Interrupted) -> Path | None:
    """Write the interrupted run's file (status failed, error ``interrupted by ...``) unless the
    run got to write its own; the path written, or None."""
    from paretopipe.results import write_result
    from paretopipe.runtime.source import failed_document

    if path.exists():
        return None
    write_result(failed_document(cfg, interrupted_error(exc.signum)), path)
    return path
