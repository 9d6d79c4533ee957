"""The marker check itself, on deliberately slow and fast tests in a pytester session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import slow_marker_check

pytest_plugins = ["pytester"]

SLOW_UNMARKED = """
import time

def test_sleeps():
    time.sleep(0.5)
"""


@pytest.fixture
def unloaded(monkeypatch):
    """The check as on an idle machine, so a neighbour's load cannot stretch the limit."""
    monkeypatch.setattr(slow_marker_check, "load_factor", lambda: 1.0)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "tests.slow_marker_check", *args)


def test_a_slow_test_not_marked_slow_fails_and_names_the_fix(pytester, unloaded):
    pytester.makepyfile(SLOW_UNMARKED)
    result = run(pytester, "--slow-limit", "0.2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_sleeps took *s, over the 0.2 s limit for tests not marked slow*"
                                 "mark it @pytest.mark.slow*"])


def test_the_same_test_marked_slow_passes(pytester, unloaded):
    pytester.makepyfile("import pytest\n\n" + SLOW_UNMARKED.replace("def test", "@pytest.mark.slow\ndef test"))
    run(pytester, "--slow-limit", "0.2").assert_outcomes(passed=1)


def test_a_test_under_the_limit_passes_and_zero_turns_the_check_off(pytester, unloaded):
    pytester.makepyfile(SLOW_UNMARKED)
    run(pytester, "--slow-limit", "30").assert_outcomes(passed=1)
    run(pytester, "--slow-limit", "0").assert_outcomes(passed=1)


def test_set_up_time_is_not_counted(pytester, unloaded):
    pytester.makepyfile("""
import time
from pathlib import Path

import pytest

@pytest.fixture(scope="module")
def expensive():
    time.sleep(0.5)

def test_uses_it(expensive):
    pass
""")
    run(pytester, "--slow-limit", "0.2").assert_outcomes(passed=1)


def test_a_failing_slow_test_keeps_its_own_failure(pytester, unloaded):
    pytester.makepyfile(SLOW_UNMARKED + "    assert 1 == 2\n")
    result = run(pytester, "--slow-limit", "0.2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])
    result.stdout.no_fnmatch_line("*over the 0.2 s limit*")


def test_the_limit_stretches_with_the_machines_load(pytester, monkeypatch):
    monkeypatch.setattr(slow_marker_check, "load_factor", lambda: 1000.0)
    pytester.makepyfile(SLOW_UNMARKED)
    run(pytester, "--slow-limit", "0.2").assert_outcomes(passed=1)


def test_load_factor_is_load_per_core_and_never_below_one(monkeypatch):
    monkeypatch.setattr(slow_marker_check.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(slow_marker_check.os, "getloadavg", lambda: (6.0, 0.0, 0.0))
    assert slow_marker_check.load_factor() == 3.0
    monkeypatch.setattr(slow_marker_check.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert slow_marker_check.load_factor() == 1.0


def test_the_default_limit_is_ten_seconds_and_a_negative_one_is_a_usage_error(pytester):
    assert slow_marker_check.DEFAULT_LIMIT_S == 10.0
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = run(pytester, "--slow-limit", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--slow-limit -1 is negative*"])


def test_root_tests_are_slow_so_the_fast_tier_leaves_them_out(pytester):
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile("""
from pathlib import Path

import pytest

@pytest.mark.root
def test_needs_a_testbed():
    pass

def test_pure():
    pass
""")
    result = pytester.runpytest_inprocess("-m", "not slow", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_pure*", "*1/2 tests collected (1 deselected)*"])
    result.stdout.no_fnmatch_line("*test_needs_a_testbed*")


def test_the_full_suite_lists_an_offender_without_failing_it(pytester, unloaded):
    pytester.makepyfile(SLOW_UNMARKED)
    result = run(pytester, "-o", "slow_limit=0.2")  # the default limit, lowered; no --slow-limit
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*marker check*", "*test_sleeps took *s, over the 0.2 s limit*"])


def test_the_fast_tier_fails_an_offender_at_the_default_limit(pytester, unloaded):
    pytester.makepyfile(SLOW_UNMARKED)
    run(pytester, "-o", "slow_limit=0.2", "-m", "not slow").assert_outcomes(failed=1)
    run(pytester, "-o", "slow_limit=0.2", "--slow-check", "report").assert_outcomes(passed=1)
