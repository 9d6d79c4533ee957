"""Waiting for something until a deadline: the one polling loop of the package.

:func:`poll_until` calls ``check`` until it returns a true value or the time is up, sleeping
between tries (``interval_s``, multiplied by ``backoff`` after each try up to
``max_interval_s``), never past the deadline. ``check`` runs at least once, and once more at
the deadline after the last sleep, so a condition that comes true just in time is seen. The
caller decides what running out of time means (an error naming what never happened, or a
fallback), since only it can say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["poll_until"]


def poll_until(check: Callable[[], T], timeout_s: float, *, interval_s: float = 0.05, backoff: float = 1.0,
               max_interval_s: float = 1.0) -> T:
    """The first true value `check` returns within `timeout_s`, else its last (false) value."""
    deadline = time.monotonic() + timeout_s
    delay = interval_s
    while True:
        result = check()
        left = deadline - time.monotonic()
        if result or left <= 0:
            return result
        time.sleep(min(delay, left))
        delay = min(delay * backoff, max_interval_s)
