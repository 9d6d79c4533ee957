"""Trace replay on the session testbed: a two-rate steps trace is followed per bin."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_a_run_under_a_shaped_trace_sees_the_steps_from_its_first_counted_batch(unshaped, tmp_path):
    """`testbed shape` of a trace + the source's clock signal: the follower replays the trace from
    the run's first counted send, so batches sent in the 5 Mbit/s steps are slower than in the
    50 Mbit/s ones, and the result file records the trace clock and capacity of each batch."""
    import json
    import os
    import subprocess
    import sys
    import time

    from benchmarks._testbed_common import stop
    from paretopipe.results import read_result, validate_result

    topo, state = unshaped.topology, unshaped.state_dir
    cond = Condition("steps-short", trace_file=str(shipped_dir() / "steps-short.csv"), trace_format="segments")
    shaped = tb.shape(cond, between=["pi1", "gpu"], state_dir=state)
    clock = shaped["trace"]["clock"]
    follower = next(p for p in shaped["processes"] if p["role"] == "tracefollow")
    server = f"{topo.device('gpu').ip}:{47100 + os.getpid() % 400}"
    worker = subprocess.Popen(["ip", "netns", "exec", topo.netns("gpu"), sys.executable, "-m", "paretopipe", "stage",
                               "serve", "--listen", server, "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "run.json"
    network = {"configured": cond.to_dict(), "extra": {"trace_clock": clock}}
    try:
        time.sleep(2.0)  # the worker imports torch
        # k = 0: the whole 2 x 3 x 64 x 64 input (98 KB) crosses the shaped hop: ~16 ms at
        # 50 Mbit/s, ~160 ms at 5 Mbit/s. 8 s of measurement = the 4 s trace twice.
        src = subprocess.run(
            ["ip", "netns", "exec", topo.netns("pi1"), sys.executable, "-m", "paretopipe", "run",
             "--model", "mobilenet_v2", "--split", "0", "--stages", server, "--input-size", "64",
             "--batch-size", "2", "--threads", "1", "--warmup", "3", "--duration", "8", "--min-batches", "10",
             "--network-label", cond.name, "--network-json", json.dumps(network), "--timeout", "60",
             "--out", str(out)], capture_output=True, text=True, timeout=240)
        assert src.returncode == 0, src.stderr[-2000:]
    finally:
        stop(worker)
        log = Path(clock).with_name("follow.jsonl")
        followed = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        tb.unshape(state_dir=state)
    doc = read_result(out)
    validate_result(doc)
    batches = doc["batches"]
    assert doc["summary"]["trace"]["replayed_from"] == clock
    assert batches[0]["trace_send_s"] == 0.0 and all("trace_capacity_mbit" in b for b in batches)
    low = [b["latency_s"] for b in batches if b["trace_capacity_mbit"] == 5]
    high = [b["latency_s"] for b in batches if b["trace_capacity_mbit"] == 50]
    print("trace run: high", len(high), "low", len(low), "median ms",
          1e3 * sorted(high)[len(high) // 2], 1e3 * sorted(low)[len(low) // 2], "follower", followed)
    assert len(low) >= 3 and len(high) >= 3, batches
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    assert median(low) > 2 * median(high), (median(low), median(high))
    # the follower replayed this run, from its t0, and is gone with the shaping
    assert [f["run_id"] for f in followed] == [doc["run_id"]] and followed[0]["changes"] >= 3 * 4, followed
    assert not followed[0]["errors"], followed
    assert not _system.pid_alive(follower["pid"], follower["start"])
    for name in topo.names:
        qdiscs = _system.run(["tc", "qdisc", "show"], ns=topo.netns(name)).stdout
        assert not re.search(r"qdisc (htb|tbf|ingress)", qdiscs), qdiscs
