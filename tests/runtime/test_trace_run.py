"""A run under a trace condition: per-batch records carry the trace clock and capacity."""

from __future__ import annotations

import json

import pytest

from paretopipe.cli import main as cli_main
from paretopipe.netcond import Condition, read_segments
from paretopipe.netcond.traces import trace_records
from paretopipe.results import read_result, validate_result


def test_trace_records_put_batches_on_the_trace_clock(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("t_s,rate\n0,50\n1,2\n2,,,,\n")
    trace = read_segments(path)
    batches = [{"batch_id": i, "send_s": s, "done_s": s + lat, "latency_s": lat}
               for i, (s, lat) in enumerate([(0.0, 0.1), (0.5, 0.1), (1.2, 0.9), (1.6, 0.7), (2.3, 0.1)])]
    out, summary = trace_records(trace, batches)
    assert [b["trace_capacity_mbit"] for b in out] == [50, 50, 2, 2, 50]  # 2.3 s: looped
    assert [b["trace_segment"] for b in out] == [0, 0, 1, 1, 0]
    assert out[2]["trace_send_s"] == 1.2 and out[2]["trace_recv_s"] == pytest.approx(2.1)
    low = summary["segments"][1]
    assert low["batches"] == 2 and low["latency_s"]["p50"] == pytest.approx(0.8)
    assert summary["segments"][0]["latency_s"]["p99"] == pytest.approx(0.1)
    assert summary["latency_s"]["p95"] > 0.8 and "looped" in summary["part_used"]


def test_a_run_under_a_trace_records_clock_and_capacity(shared_workers, tmp_path):
    w1, _ = shared_workers
    trace_file = tmp_path / "steps.csv"
    trace_file.write_text("t_s,rate,delay\n0,50,5\n0.2,2,5\n0.4,,,,\n")
    cond = Condition("steps", trace_file=str(trace_file), trace_format="segments")
    net = tmp_path / "net.json"
    # as the netem role records it: no name in `configured` (the label names the condition)
    net.write_text(json.dumps({"configured": {k: v for k, v in cond.to_dict().items() if k != "name"}}))
    out = tmp_path / "run.json"
    rc = cli_main(["run", "--model", "resnet18", "--split", "5", "--stages", w1.address, "--batches", "6",
                   "--warmup", "2", "--input-size", "64", "--batch-size", "2", "--threads", "1",
                   "--network-label", "steps", "--network-json", f"@{net}", "--out", str(out)])
    assert rc == 0
    doc = read_result(out)
    validate_result(doc)
    trace = read_segments(trace_file)
    batches = doc["batches"]
    assert len(batches) == 6 and batches[0]["trace_send_s"] == 0.0  # t = 0 after the warm-up
    for b in batches:
        assert b["trace_send_s"] == b["send_s"] and b["trace_recv_s"] == b["done_s"]
        assert b["trace_capacity_mbit"] == trace.capacity_mbit(b["trace_send_s"])
    tr = doc["summary"]["trace"]
    assert tr["source"] == str(trace_file) and sum(s["batches"] for s in tr["segments"]) == 6
    assert tr["replayed_from"] is None  # no clock file: nothing replayed the link in time with it
    assert tr["latency_s"]["p50"] <= tr["latency_s"]["p95"] <= tr["latency_s"]["p99"]

    # the analysis (files only): the per-batch frame, and the timeline in the report
    from analysis.pareto import main as analysis_main
    from analysis.timeline import batches_frame

    assert batches_frame(tmp_path).empty  # 6 batches < the minimum: not valid
    frame = batches_frame(tmp_path, include_invalid=True)
    assert len(frame) == 6 and set(frame["network"]) == {"steps"}
    assert frame["trace_capacity_mbit"].tolist() == [b["trace_capacity_mbit"] for b in batches]
    report = tmp_path / "report"
    assert analysis_main([str(out), "--out", str(report), "--include-invalid"]) == 0
    assert (report / "plots" / "timeline_resnet18_steps.png").is_file()
    # the capacity panel steps where the trace does (0.2 s, looped every 0.4 s), not at batches
    from analysis.timeline import capacity_steps

    times, rates = capacity_steps(out, 0.9)
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.9]) and rates == [50, 2, 50, 2, 50, 50]
    assert "Timeline: resnet18, steps" in (report / "report.md").read_text()
    # the trace-wide objective: p95 latency over the whole run, on the frontier
    from analysis import load_runs

    runs = load_runs(out, include_invalid=True)
    assert runs["latency_p95_trace"].tolist() == [pytest.approx(tr["latency_s"]["p95"])]
    assert analysis_main([str(out), "--out", str(tmp_path / "r2"), "--include-invalid", "--no-plots",
                          "--objectives", "latency_p95_trace:min,throughput:max"]) == 0
