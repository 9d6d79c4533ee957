"""Network conditions on the session testbed: achieved vs configured, in a row, loss, unshape."""

from __future__ import annotations

import json
import re

import pytest

from paretopipe import testbed as tb
from paretopipe.netcond import Condition
from paretopipe.testbed import _system

pytestmark = pytest.mark.root


def within(measured: float, expected: float, bound: float) -> bool:
    return abs(measured - expected) <= bound


def test_two_conditions_in_a_row_are_achieved_within_tolerance(unshaped):
    state = unshaped.state_dir
    for cond in (Condition("c20", delay_ms=20, rate_mbit=20),
                 Condition("c100", delay_ms=5, rate_mbit=100)):
        tb.shape(cond, state_dir=state)
        res = tb.check(state_dir=state, duration_s=1.5)
        m = res["measured"]
        assert res["configured"]["rate_mbit"] == cond.rate_mbit
        assert res["configured"]["delay_ms"] == cond.delay_ms
        # The promise: RTT within 2 ms + 10% of 2 x delay, rate within 10%.
        assert within(m["rtt_ms"], 2 * cond.delay_ms, 2 + 0.1 * 2 * cond.delay_ms), res
        assert within(m["rate_mbit"], cond.rate_mbit, 0.1 * cond.rate_mbit), res
        assert res["ok"] is True and res["checks"]["rate"]["ok"] is True


def test_lossy_condition_still_delivers_bit_exact_data(unshaped):
    state = unshaped.state_dir
    tb.shape(Condition("lossy", delay_ms=5, loss_pct=2, rate_mbit=50), between=["pi1", "pi2"],
             state_dir=state)
    size = 4 * 1024 * 1024 + 12345
    out = tb.transfer(unshaped.topology, "pi1", "pi2", nbytes=size, sha256=True)
    assert out["send"]["bytes"] == out["recv"]["bytes"] == size
    assert out["send"]["sha256"] == out["recv"]["sha256"]
    # And the loss was real: the receiver's statistic rule dropped packets.
    rules = _system.run(["iptables", "-t", "mangle", "-vxnL", "PP-SHAPE"],
                        ns=unshaped.topology.netns("pi2")).stdout
    drop = next(line for line in rules.splitlines() if "DROP" in line and "statistic" in line)
    assert int(drop.split()[0]) > 0, rules


def test_between_leaves_other_pairs_and_the_controller_unshaped(unshaped):
    state, topo = unshaped.state_dir, unshaped.topology
    tb.shape(Condition("far", delay_ms=15), between=["pi1", "gpu"], state_dir=state)
    shaped = tb.check(["pi1", "gpu"], state_dir=state)
    other = tb.check(["pi1", "pi2"], state_dir=state)
    assert within(shaped["measured"]["rtt_ms"], 30, 5), shaped
    # The other pair and the controller's path (its SSH) carry none of the 15 ms: their fastest
    # replies are faster than the delay alone allows (the unshaped RTT itself is a benchmark's:
    # benchmarks/bench_testbed_conditions.py).
    assert other["configured"]["name"] == "unshaped"
    assert other["measured"]["rtt_min_ms"] < 15, other
    ping = _system.run(["ping", "-n", "-c", "3", "-i", "0.1", topo.device("pi1").ip]).stdout
    assert float(re.search(r"= ([0-9.]+)/", ping).group(1)) < 15, ping


def test_unshape_removes_every_trace(unshaped):
    state, topo = unshaped.state_dir, unshaped.topology
    rec = tb.shape("wifi", state_dir=state)
    pids = [p["pid"] for p in rec["processes"]]
    assert pids and all(map(_system.pid_alive, pids))
    kernel = tb.status(state_dir=state)["devices"]["pi1"]["shaped"]["kernel"]
    assert kernel["rate_mbit"] == 50.0  # what tc reports back, parsed
    assert tb.unshape(state_dir=state)["changed"] is True
    assert not any(map(_system.pid_alive, pids))
    for name in topo.names:
        ns = topo.netns(name)
        qdiscs = _system.run(["tc", "qdisc", "show"], ns=ns).stdout
        assert not re.search(r"qdisc (htb|tbf|ingress|netem)", qdiscs), qdiscs
        assert "ifb0" not in _system.links(ns)
        assert "PP-SHAPE" not in _system.run(["iptables", "-t", "mangle", "-S"], ns=ns).stdout
    assert tb.status(state_dir=state)["shaping"] is None


def test_cli_shape_check_unshape(unshaped):
    from tests.conftest import run_cli

    sd = ["--state-dir", str(unshaped.state_dir)]
    out = run_cli("testbed", "shape", "--condition", "wan", "--between", "pi1,pi2", *sd)
    assert out.returncode == 0, out.stderr
    assert "shaped pi1 towards pi2: wan (10mbit, 50 ms)" in out.stdout
    out = run_cli("testbed", "check", "--json", *sd)
    res = json.loads(out.stdout)
    assert out.returncode == (0 if res["ok"] else 1)
    assert res["configured"] == {"name": "wan", "delay_ms": 50.0, "jitter_ms": 0.0,
                                 "loss_pct": 0.0, "rate_mbit": 10.0}
    assert res["ok"], res
    out = run_cli("testbed", "shape", "--condition", "lan", "--between", "pi1,pi2", "--json", *sd)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["condition"]["name"] == "lan"  # stdout is the JSON alone
    assert "testbed shape" in out.stderr
    out = run_cli("testbed", "shape", "--delay", "5ms", "--condition", "wan", *sd)
    assert out.returncode == 2 and "not both" in out.stderr
    out = run_cli("testbed", "unshape", *sd)
    assert out.returncode == 0 and "removed shaping" in out.stdout
