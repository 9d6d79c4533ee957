"""The one polling loop: first true value, the last false one at the deadline, never past it."""

from __future__ import annotations

import time

from paretopipe.polling import poll_until


def test_returns_the_first_true_value():
    calls = []

    def check():
        calls.append(1)
        return "ready" if len(calls) == 3 else None

    assert poll_until(check, 5.0, interval_s=0.001) == "ready"
    assert len(calls) == 3


def test_gives_up_at_the_deadline_with_the_last_value():
    t0 = time.monotonic()
    calls = []
    assert poll_until(lambda: calls.append(1), 0.2, interval_s=0.05) is None
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 2.0
    assert len(calls) >= 2  # tried again at the deadline, not only at the start


def test_checks_once_even_without_time_and_backs_off():
    calls = []
    assert poll_until(lambda: calls.append(time.monotonic()), 0.0) is None
    assert len(calls) == 1
    stamps: list[float] = []
    poll_until(lambda: stamps.append(time.monotonic()) or len(stamps) == 4, 5.0, interval_s=0.02, backoff=2.0)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert len(gaps) == 3 and gaps[2] >= 0.07  # 0.02, 0.04, 0.08
