"""The marker check: a test whose call takes longer than ``--slow-limit`` seconds and that is not
marked ``slow`` fails, with a message that names the fix.

Loaded by tests/conftest.py for every run (so both tiers check), and by its own test through
pytester. What is measured and why it cannot make a run flaky on a loaded machine:

- the *call* phase only (``report.duration`` of the call), never set-up or tear-down: a
  module or session fixture (a testbed, a pair of workers) is paid once, in the first test's
  set-up, and would otherwise fail whichever test happens to come first;
- against the limit scaled by the machine's load: ``limit * max(1, loadavg / cores)``, the
  1-minute load average taken at the end of the call (it includes the test itself, so one test
  on an idle 2-core machine is load 1 of 2 and the limit stays 10 s). On a machine where six
  jobs share two cores every test's wall time stretches about threefold, and so does the
  limit. A test that takes 10 s on an idle machine is slow; a 4 s test stretched to 11 s by
  five neighbours is not;
- only tests that passed: a failed or skipped test already says so.

Where it fails and where it only reports: a run that leaves the slow tests out (``-m "not slow"``,
the fast tier, whose 3-minute budget the check guards) or that names ``--slow-limit`` fails the
offending test. The full suite (``./scripts/test.sh`` with no ``-m``, CI's run) lists the same
offenders in its summary under "marker check" without failing them: there a test's time costs
nothing it is meant to guard, and a machine busy with other work must not make CI fail on time
alone (decision: a timing figure belongs to a report or a benchmark, never to a pass/fail in the
run that lands a change). ``--slow-check fail|report`` says which, explicitly.

``--slow-limit 0`` turns the check off.
"""

from __future__ import annotations

import os

import pytest

DEFAULT_LIMIT_S = 10.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow-limit", type=float, default=None, metavar="SECONDS",
        help=f"fail a passing test not marked slow whose call takes longer than SECONDS times the "
             f"machine's load factor max(1, loadavg/cores) (default {DEFAULT_LIMIT_S:g}; 0 turns the check off)")
    parser.addini("slow_limit", default=str(DEFAULT_LIMIT_S),
                  help="the marker check's limit in seconds when --slow-limit is not given (its own tests set it)")
    parser.addoption(
        "--slow-check", choices=("fail", "report"), default=None,
        help="fail the tests over --slow-limit, or only list them in the summary (default: fail when -m "
             "names slow, as the fast tier does, or --slow-limit is given; report otherwise)")


def _failing(config: pytest.Config) -> bool:
    mode = config.getoption("--slow-check")
    if mode is not None:
        return mode == "fail"
    return "slow" in (config.getoption("markexpr") or "") or config.getoption("--slow-limit") is not None


def load_factor() -> float:
    """How many times over the machine's cores are asked for, at least 1."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: no scaling
        return 1.0
    return max(1.0, load / (os.cpu_count() or 1))


def _limit(config: pytest.Config) -> float:
    value = config.getoption("--slow-limit")
    if value is None:
        return float(config.getini("slow_limit"))
    if value < 0:
        raise pytest.UsageError(f"--slow-limit {value:g} is negative; give seconds, or 0 to turn the check off")
    return value


def pytest_configure(config: pytest.Config) -> None:
    _limit(config)  # a bad value is a usage error before anything runs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.passed or item.get_closest_marker("slow") is not None:
        return
    limit = _limit(item.config)
    if not limit:
        return
    factor = load_factor()
    if report.duration > limit * factor:
        message = (
            f"{item.nodeid} took {report.duration:.1f} s, over the {limit:g} s limit for tests not "
            f"marked slow (x{factor:.2f} for the machine's load): mark it @pytest.mark.slow "
            f"(it then runs only in the full suite) or make it faster")
        if _failing(item.config):
            report.outcome = "failed"
            report.longrepr = message
        else:
            report.user_properties.append(("marker_check", message))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    found = [value for report in terminalreporter.stats.get("passed", [])
             for key, value in getattr(report, "user_properties", ()) if key == "marker_check"]
    if found:
        terminalreporter.section("marker check (reported, not failed, in a run that keeps slow tests)")
        for line in found:
            terminalreporter.write_line(line)
