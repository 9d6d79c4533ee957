"""Trace replay on the session testbed: a two-rate steps trace is followed per bin."""

from __future__ import annotations

import re

import pytest

from paretopipe import testbed as tb
from paretopipe.netcond import Condition
from paretopipe.netcond.maker import shipped_dir
from paretopipe.testbed import _system

pytestmark = pytest.mark.root


def test_replay_follows_a_two_rate_steps_trace_per_bin(unshaped):
    cond = Condition("steps-short", trace_file=str(shipped_dir() / "steps-short.csv"), trace_format="segments")
    res = tb.check_trace(cond, ["pi1", "pi2"], state_dir=unshaped.state_dir, duration_s=8, bin_s=0.5)
    print("replay:", [(b["t_s"], b["capacity_mbit"], b["achieved_mbit"]) for b in res["bins"]],
          res["passed"], "of", res["judged"], "late ms max", res["change_late_ms_max"])
    bins = res["bins"]
    assert [b["capacity_mbit"] for b in bins[::4]] == [50, 5, 50, 5]
    judged = [b for b in bins if b["judged"]]
    assert len(judged) == res["judged"] == 12  # three settled bins in each 2 s step
    low = [b["achieved_mbit"] for b in judged if b["capacity_mbit"] == 5]
    high = [b["achieved_mbit"] for b in judged if b["capacity_mbit"] == 50]
    assert max(low) < 0.3 * min(high), res  # the steps are real, not smeared
    assert res["ok"] is True, res  # >= 80% of judged bins within 15% of the capacity
    assert res["changes"] == 3 * 2 * 2  # 3 steps x 2 devices x (egress + ifb)
    # and nothing is left shaped
    for name in unshaped.topology.names:
        qdiscs = _system.run(["tc", "qdisc", "show"], ns=unshaped.topology.netns(name)).stdout
        assert not re.search(r"qdisc (htb|tbf|ingress)", qdiscs), qdiscs


def test_cli_check_on_a_trace_condition_prints_each_bin(unshaped, tmp_path):
    from tests.conftest import run_cli

    conds = tmp_path / "c.yml"
    conds.write_text(f"conditions:\n  steps: {{trace: {shipped_dir() / 'steps-short.csv'}}}\n")
    proc = run_cli("testbed", "check", "--state-dir", str(unshaped.state_dir), "--pair", "pi1,pi2",
                   "--trace", "steps", "--conditions", str(conds), "--duration", "4", "--bin", "1")
    assert proc.returncode in (0, 1), proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("t=")]
    assert len(lines) == 4 and "capacity        50 Mbit/s" in lines[0] and "capacity         5" in lines[2], proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("result: ")
