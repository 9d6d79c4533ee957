"""Trace conditions: both formats parse, loop and refuse bad files; the maker is seeded."""

from __future__ import annotations

import pytest

from paretopipe import netcond
from paretopipe.cli import main as cli_main
from paretopipe.errors import ConfigError
from paretopipe.netcond import Condition, read_mahimahi, read_segments, read_trace
from paretopipe.netcond.maker import SHIPPED, TraceSpec, make_text, shipped_dir, shipped_text
from paretopipe.netcond.traces import write_mahimahi


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- Mahimahi ---------------------------------------------------------------------------------

def test_mahimahi_single_line_is_twelve_mbit_forever(tmp_path):
    # Mahimahi's own doc example: "1" on its own = one 1500-byte packet per ms = 12 Mbit/s
    trace = read_mahimahi(_write(tmp_path, "12mbps", "1\n"))
    assert [s.rate_mbit for s in trace.segments] == [pytest.approx(12.0)]
    assert trace.end_s == 0.001
    assert trace.capacity_mbit(3600.0) == pytest.approx(12.0)


def test_mahimahi_counts_repeated_stamps_bins_and_loops(tmp_path):
    # as Mahimahi's traces are written: one integer per line, newline-terminated, a stamp
    # repeated for several packets in the same ms. 0-1 s: 2 packets/ms (24 Mbit/s); 1-2 s:
    # one packet every 2 ms (6 Mbit/s). The period is the last stamp, 2000 ms.
    lines = [str(ms) for ms in range(1, 1001) for _ in range(2)] + [str(ms) for ms in range(1002, 2001, 2)]
    trace = read_mahimahi(_write(tmp_path, "two.up", "\n".join(lines) + "\n"), bin_s=0.5)
    assert trace.end_s == 2.0
    assert [s.t_s for s in trace.segments] == [0.0, 1.0]
    # a stamp t is a delivery in (t-1, t] ms: the 0.5 s bins hold stamps 1..500, 501..1000, ...
    assert trace.capacity_mbit(0.7) == pytest.approx(24.0)
    assert trace.capacity_mbit(1.2) == pytest.approx(6.0)
    assert trace.capacity_mbit(2.7) == pytest.approx(24.0)  # looped
    assert trace.capacity_mbit(3.2) == pytest.approx(6.0)
    assert "looped 2.50 times" in trace.part_used(5.0)


def test_mahimahi_round_trip_of_a_steps_trace(tmp_path):
    steps = read_segments(_write(tmp_path, "s.csv", make_text(TraceSpec("steps", duration_s=4, step_s=1,
                                                                        low_mbit=6, high_mbit=24))))
    mahi = read_mahimahi(_write(tmp_path, "s.mahi", write_mahimahi(steps)), bin_s=1.0)
    assert mahi.end_s == 4.0
    got = [mahi.capacity_mbit(t + 0.5) for t in range(4)]
    assert got == [pytest.approx(r, abs=0.02) for r in (24, 6, 24, 6)]


@pytest.mark.parametrize("text, line, words", [
    ("5\n7\n6\n", 3, "must not decrease"),
    ("", 1, "empty"),
    ("\n\n", 2, "empty"),
    ("0\n0\n", 2, "lasts 0 ms"),
    ("1\n2.5\n", 2, "not a timestamp"),
    ("1\n-3\n", 2, "not a timestamp"),
])
def test_mahimahi_refusals_name_file_and_line(tmp_path, text, line, words):
    path = _write(tmp_path, "bad.up", text)
    with pytest.raises(ConfigError, match=rf"bad\.up:{line}: .*{words}"):
        read_mahimahi(path)


def test_mahimahi_bin_below_the_shortest_step_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="shorter than the 0.1 s steps"):
        read_mahimahi(_write(tmp_path, "a.up", "1\n"), bin_s=0.01)


# -- segments tables --------------------------------------------------------------------------

CSV = """# a commute
t_s,rate,delay,jitter,loss
0,50mbit,5ms,1ms,0%
10,2mbit,20ms,,1%
12.5,,5ms,0ms,0
30,,,,
"""


def test_segments_csv_units_end_row_and_loop(tmp_path):
    trace = read_segments(_write(tmp_path, "c.csv", CSV))
    assert trace.end_s == 30
    first, second, third = trace.segments
    assert (first.rate_mbit, first.delay_ms, first.jitter_ms, first.line) == (50, 5, 1, 3)
    assert (second.rate_mbit, second.delay_ms, second.loss_pct) == (2, 20, 1)
    assert third.rate_mbit is None  # empty rate = unlimited
    assert trace.at(11).rate_mbit == 2 and trace.at(41).rate_mbit == 2  # looped at 30 s
    assert [t for t, _ in trace.boundaries(45)] == [0, 10, 12.5, 30, 40, 42.5]
    assert trace.part_used(20) == f"0-20 s of the 30 s trace {tmp_path / 'c.csv'} (segments 1-3 of 3)"


def test_segments_without_end_hold_the_last_row(tmp_path):
    trace = read_segments(_write(tmp_path, "o.csv", "t_s,rate\n0,10\n5,1\n"))
    assert trace.end_s is None
    assert trace.capacity_mbit(1e6) == 1
    assert "the last one held to the end" in trace.part_used(60)


def test_segments_yaml_with_gilbert_elliott(tmp_path):
    path = _write(tmp_path, "g.yml", """segments:
  - {t_s: 0, rate: 20mbit, delay: 10ms}
  - {t_s: 1.5, rate: 0}
end_s: 3
gilbert_elliott: {p: 1%, r: 30%, h: 10%}
""")
    trace = read_segments(path)
    assert [s.line for s in trace.segments] == [2, 3]
    assert trace.capacity_mbit(2.0) == 0  # an outage inside the trace is fine
    ge = trace.gilbert_elliott
    assert ge.mean_loss_pct == pytest.approx(1 / 31 * 90)


@pytest.mark.parametrize("name, text, line, words", [
    ("neg.csv", "t_s,rate\n0,1\n-1,2\n", 3, "negative"),
    ("order.csv", "t_s,rate\n0,1\n5,2\n3,2\n", 4, "not after the previous"),
    ("same.csv", "t_s,rate\n0,1\n0,2\n", 3, "not after the previous"),
    ("empty.csv", "# nothing\nt_s,rate,delay\n", 2, "empty"),
    ("zero.csv", "t_s,rate\n0,0\n4,0mbit\n", 2, "rate is 0 for the whole trace"),
    ("unit.csv", "t_s,rate\n0,1\n4,10furlongs\n", 3, "bad rate '10furlongs'"),
    ("dunit.csv", "t_s,rate,delay\n0,1,3 fortnights\n", 2, "bad time"),
    ("short.csv", "t_s,rate\n0,1\n2,5\n2.05,1\n", 3, "lasts 0.05 s; the replay follows steps of 0.1 s"),
    ("shortend.csv", "t_s,rate\n0,1\n2,5\n2.02,,,,\n", 3, "lasts 0.02 s"),
    ("start.csv", "t_s,rate\n1,1\n", 2, "starts at t_s 0"),
    ("col.csv", "t_s,rate,bandwidth\n0,1,2\n", 2, "unknown column"),
    ("mid.csv", "t_s,rate\n0,1\n2,,,,\n3,2\n", 3, "must be the last row"),
    ("jit.csv", "t_s,rate,delay,jitter\n0,1,1ms,2ms\n", 2, "jitter 2 ms exceeds delay"),
    ("y.yml", "segments:\n  - {t_s: 0, rate: 1}\n  - {t_s: 1, rate: 1parsec}\n", 3, "bad rate"),
    ("yend.yml", "segments:\n  - {t_s: 0, rate: 1}\n  - {t_s: 1, rate: 2}\nend_s: 1.05\n", 3, "lasts 0.05 s"),
])
def test_segments_refusals_name_file_and_line(tmp_path, name, text, line, words):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=rf"{name.replace('.', '[.]')}:{line}: .*{words}"):
        read_segments(path)


def test_unknown_trace_suffix_for_segments(tmp_path):
    with pytest.raises(ConfigError, match="unknown trace format '.txt'"):
        read_segments(_write(tmp_path, "t.txt", "t_s,rate\n0,1\n"))
    assert read_trace(_write(tmp_path, "t.down", "1\n")).kind == "mahimahi"


# -- named trace conditions -------------------------------------------------------------------

def test_trace_conditions_live_in_the_conditions_file(tmp_path):
    (tmp_path / "traces").mkdir()
    _write(tmp_path / "traces", "commute.csv", CSV)
    _write(tmp_path / "traces", "lte.up", "1\n1\n")
    conds = _write(tmp_path, "c.yml", """conditions:
  wifi: {rate: 50mbit, delay: 5ms}
  commute: {trace: traces/commute.csv}
  lte: {mahimahi: traces/lte.up, delay: 20ms, loss: 1%}
""")
    table = netcond.load_conditions(conds)
    assert not table["wifi"].is_trace
    commute, lte = table["commute"], table["lte"]
    assert commute.is_trace and not commute.is_null
    assert commute.trace_file == str(tmp_path / "traces" / "commute.csv")
    assert commute.trace().capacity_mbit(11) == 2
    assert lte.trace().capacity_mbit(0) == pytest.approx(24) and lte.trace().at(5).delay_ms == 20
    assert Condition(**commute.to_dict()) == commute  # survives the testbed's state file
    assert "trace" in commute.describe()


@pytest.mark.parametrize("entry, words", [
    ("{trace: t.csv, rate: 5mbit}", "a trace gives the rate"),
    ("{trace: t.csv, delay: 5ms}", "carries its own delay"),
    ("{trace: t.csv, mahimahi: t.up}", "not both"),
    ("{trace: missing.csv}", "cannot read trace file"),
    ("{trace: bad.csv}", r"bad\.csv:3: .*not after"),
])
def test_bad_trace_conditions_are_refused_when_the_file_is_read(tmp_path, entry, words):
    _write(tmp_path, "t.csv", "t_s,rate\n0,1\n")
    _write(tmp_path, "bad.csv", "t_s,rate\n4,1\n1,1\n")
    conds = _write(tmp_path, "c.yml", f"conditions:\n  x: {entry}\n")
    with pytest.raises(ConfigError, match=words):
        netcond.load_conditions(conds)


def test_packaged_trace_conditions_load():
    table = netcond.load_conditions()
    steps = table["steps-2-50"].trace()
    assert [steps.capacity_mbit(t) for t in (5, 15, 25)] == [50, 2, 50]


def test_nothing_applies_a_trace_as_if_it_were_constant(tmp_path):
    cond = netcond.load_conditions()["steps-2-50"]
    with pytest.raises(ConfigError, match="is a trace .* not on real NICs"):
        netcond.egress_commands("eth0", ["10.0.0.2"], cond)
    with pytest.raises(ConfigError, match="is a trace"):
        netcond.ingress_commands("eth0", "ifb0", ["10.0.0.2"], cond)
    from paretopipe import testbed

    # testbed shape replays the rate only: a trace whose delay moves is refused before root or state
    moving = tmp_path / "moving.csv"
    moving.write_text("t_s,rate,delay\n0,10mbit,5ms\n2,10mbit,50ms\n")
    with pytest.raises(ConfigError, match="moving.csv:3: delay/jitter/loss change at 2 s"):
        testbed.shape(Condition("moving", trace_file=str(moving), trace_format="segments"),
                      state_dir="/nonexistent-i25")


def test_netcond_apply_dry_run_refuses_a_trace(capsys):
    assert netcond.main(["apply", "--dev", "eth0", "--peers", "10.0.0.2",
                         "--condition", "walk-away", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netcond: error: condition walk-away is a trace") and err.count("\n") == 1


# -- the maker --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_traces_regenerate_byte_for_byte(name):
    assert (shipped_dir() / name).read_bytes() == shipped_text(name).encode()
    read_segments(shipped_dir() / name)  # and they are valid traces


@pytest.mark.parametrize("kind", ["steps", "walk", "walk-away", "outage"])
def test_maker_is_deterministic_for_a_seed_and_bounded(tmp_path, kind):
    spec = TraceSpec(kind, seed=7, duration_s=30, step_s=0.5, low_mbit=2, high_mbit=40, outage_mbit=0.1)
    text = make_text(spec)
    assert make_text(spec) == text
    trace = read_segments(_write(tmp_path, "m.csv", text))
    rates = [s.rate_mbit for s in trace.segments]
    floor = 0.1 if kind == "outage" else 2
    assert all(floor - 1e-3 <= r <= 40 + 1e-3 for r in rates)
    assert len(set(rates)) >= 2 and trace.end_s == 30
    if kind != "steps":
        other = make_text(TraceSpec(kind, seed=8, duration_s=30, step_s=0.5, low_mbit=2, high_mbit=40))
        assert other != text


def test_walk_away_falls_then_recovers():
    rates = [float(line.split(",")[1].removesuffix("kbit").removesuffix("mbit"))
             for line in shipped_text("walk-away.csv").splitlines()[3:-1]]
    assert len(rates) > 10  # kbit or mbit; the middle is far below both ends
    text = (shipped_dir() / "walk-away.csv")
    trace = read_segments(text)
    assert trace.capacity_mbit(30) < trace.capacity_mbit(0) / 10
    assert trace.capacity_mbit(59) > trace.capacity_mbit(30) * 10


def test_cli_make_and_show(tmp_path, capsys):
    out = tmp_path / "w.csv"
    assert cli_main(["trace", "make", "walk", "--out", str(out), "--seed", "3", "--duration", "10"]) == 0
    assert out.read_text() == make_text(TraceSpec("walk", seed=3, duration_s=10))
    assert "made by: paretopipe trace make walk --seed 3 --duration 10" in out.read_text()
    assert cli_main(["trace", "make", "walk", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert cli_main(["trace", "make", "steps", "--out", str(out), "--step", "0.05", "--force"]) == 2
    assert "shorter than the 0.1 s steps" in capsys.readouterr().err
    assert cli_main(["trace", "show", str(out), "--run", "25"]) == 0
    assert "looped 2.50 times" in capsys.readouterr().out
    bad = _write(tmp_path, "bad.up", "3\n2\n")
    assert cli_main(["trace", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: timestamp 2 ms comes after 3 ms" in err and err.count("\n") == 1


# -- replay's tc steps (pure; the scheduler that runs them in time is not written yet) --------

def test_rate_change_commands_change_the_tbf_that_shaping_installed():
    cmds = netcond.rate_change_commands("veth0", 2.0, 5.0, ifb="ifb0")
    burst, limit = netcond.tbf_burst_limit(2.0, 5.0)
    assert cmds == [
        ["tc", "qdisc", "change", "dev", "veth0", "parent", "1:10", "handle", "20:", "tbf",
         "rate", "2mbit", "burst", str(burst), "limit", str(limit)],
        ["tc", "qdisc", "change", "dev", "ifb0", "root", "handle", "20:", "tbf",
         "rate", "2mbit", "burst", str(burst), "limit", str(limit)],
    ]
    # the same handle and parent egress_commands gives the tbf of a rate-only condition
    installed = netcond.egress_commands("veth0", ["10.0.0.2"], Condition("c", rate_mbit=2.0, delay_ms=5.0),
                                        netem=False)
    tbf = next(c for c in installed if "tbf" in c)
    assert tbf[tbf.index("parent"):tbf.index("tbf")] == cmds[0][cmds[0].index("parent"):cmds[0].index("tbf")]
    assert netcond.rate_change_commands("e", 0)[0][-5] == "8kbit"  # an outage keeps a tbf


def test_replay_schedule_unrolls_loops_and_skips_equal_rates(tmp_path):
    trace = read_segments(_write(tmp_path, "s.csv", "t_s,rate,delay\n0,50,5\n2,50,9\n4,2,5\n6,,,,\n"))
    sched = netcond.replay_schedule(trace, 13, "veth0")
    assert [t for t, _ in sched] == [0, 4, 6, 10, 12]
    assert [cmds[0][cmds[0].index("rate") + 1] for _, cmds in sched] == ["50mbit", "2mbit"] * 2 + ["50mbit"]


def test_judge_bins_skips_steps_and_applies_the_tolerance(tmp_path):
    from paretopipe.testbed._replay import judge_bins

    trace = read_segments(_write(tmp_path, "s.csv", "t_s,rate\n0,40\n2,4\n4,,,,\n"))
    mbit = [40, 39, 38, 30, 4.1, 4.0, 4.0, 4.0]  # 0.5 s bins; bin 3 misses by 25%
    bins = [round(m * 1e6 / 8 * 0.5) for m in mbit]
    v = judge_bins(trace, bins, 0.5, 4.0)
    assert [b["judged"] for b in v["bins"]] == [False, True, True, True] * 2
    assert [b["ok"] for b in v["bins"]][:4] == [None, True, True, False]
    assert (v["judged"], v["passed"], v["ok"]) == (6, 5, True)
    assert judge_bins(trace, bins[:4], 0.5, 4.0)["ok"] is False  # nothing arrived after 2 s


def test_predict_refuses_a_trace_condition():
    import argparse

    from paretopipe.cli.profile_cmd import link_from_args

    args = argparse.Namespace(condition="steps-2-50", conditions=None, rate=None, delay=None,
                              overhead_ms=None, backend="tcp", framing=None, network_label=None)
    with pytest.raises(ConfigError, match="steps-2-50 is a trace .*`paretopipe predict` applies constant"):
        link_from_args(args)


# -- following each run's t0 (the clock signal and the follower, with tc calls recorded) ---------


def test_clock_signal_round_trips_and_refuses_a_missing_directory(tmp_path):
    from paretopipe.netcond.clock import check_clock_file, read_signal, write_signal

    clock = tmp_path / "clock.json"
    assert read_signal(clock) is None
    write_signal(clock, "run-a", "start", 12.5)
    first = read_signal(clock)
    write_signal(clock, "run-a", "stop", 20.0)
    second = read_signal(clock)
    assert (first["event"], first["t0"], second["event"], second["at"]) == ("start", 12.5, "stop", 20.0)
    assert second["seq"] > first["seq"] and list(tmp_path.iterdir()) == [clock]  # no temporary left
    with pytest.raises(ConfigError, match="missing or not writable; shape the trace condition"):
        check_clock_file(tmp_path / "nowhere" / "clock.json")


def test_follower_replays_from_each_signalled_t0_and_resets_between_runs(tmp_path, monkeypatch):
    import json
    import threading
    import time

    from benchmarks._testbed_common import topology_text, two_pis
    from paretopipe.netcond.clock import write_signal
    from paretopipe.testbed import _replay, tracefollow
    from paretopipe.testbed.topology import load_topology

    (tmp_path / "t.yml").write_text(topology_text("zz", "10.99.1", two_pis()))
    topo = load_topology(tmp_path / "t.yml")
    trace_file = _write(tmp_path, "s.csv", "t_s,rate,delay\n0,50,5\n0.3,5,5\n0.6,,,,\n")
    calls: list[tuple[float, str, str]] = []  # (monotonic, namespace, rate)

    def fake_run(cmd, ns=None, timeout=None, **_):
        calls.append((time.monotonic(), ns, cmd[cmd.index("rate") + 1]))

    monkeypatch.setattr(_replay._system, "run", fake_run)
    spec = {"topology": topo.to_dict(), "between": ["pi1", "pi2"], "netem": False, "ifb": "ifb0",
            "condition": Condition("s", trace_file=str(trace_file), trace_format="segments").to_dict(),
            "clock": str(tmp_path / "clock.json"), "log": str(tmp_path / "follow.jsonl")}
    write_signal(spec["clock"], "stale", "start", 0.0)  # left by an earlier shaping: ignored
    follower = tracefollow.Follower(spec)
    stopping = threading.Event()
    thread = threading.Thread(target=follower.serve, args=(stopping,))
    thread.start()
    try:
        time.sleep(0.1)
        assert calls == []
        t0 = time.monotonic() + 0.05
        write_signal(spec["clock"], "run-1", "start", t0)
        time.sleep(0.5)  # the 0.3 s step has run, the 0.6 s one (back to 50) not yet
        write_signal(spec["clock"], "run-1", "stop", time.monotonic())
        time.sleep(0.2)
        t1 = time.monotonic() + 0.05
        write_signal(spec["clock"], "run-2", "start", t1)
        time.sleep(0.45)
    finally:
        stopping.set()
        thread.join(5)
    per_step = 4  # 2 devices x (egress + ifb)
    assert [r for _, _, r in calls] == ["5mbit"] * per_step + ["50mbit"] * per_step + ["5mbit"] * per_step + \
        ["50mbit"] * per_step, calls  # run 1's step, its reset, run 2's step, the reset at exit
    assert {ns for _, ns, _ in calls} == {topo.netns("pi1"), topo.netns("pi2")}
    assert all(t >= t0 + 0.3 for t, _, _ in calls[:per_step]) and calls[per_step * 2][0] >= t1 + 0.3
    log = [json.loads(line) for line in (tmp_path / "follow.jsonl").read_text().splitlines()]
    assert [(r["run_id"], r["changes"], r["errors"]) for r in log] == [("run-1", 4, []), ("run-2", 4, [])]
