"""Result files: schema checks, atomic never-overwriting writes, summaries."""

from __future__ import annotations

import pytest

from paretopipe.errors import ConfigError
from paretopipe.metrics import BatchRecord, summarize
from paretopipe.results import (
    build_result,
    read_result,
    run_id,
    validate_result,
    validity,
    write_result,
)


def _doc(**over):
    stages = [{"index": 0, "host": "a", "device": "cpu", "address": None, "blocks": [0, 5]},
              {"index": 1, "host": "b", "device": "cpu", "address": "h:1", "blocks": [5, 15]}]
    config = {k: None for k in ("model", "num_classes", "input_size", "weights", "num_blocks", "backend",
                                "batch_size", "window", "warmup", "batches", "duration_s", "min_batches",
                                "min_duration_s", "input", "seed", "threads", "repeat")}
    config.update(model="resnet18", backend="tcp", batch_size=8, window=1, splits=[5], stages=stages, network={"label": "none", "configured": None, "measured": None, "extra": {}})
    recs = [BatchRecord(i, 10.0 + i, 10.5 + i, (0.1, 0.2), (0.0, 0.01), (100, 40), (0.01, 0.02), 0.0) for i in range(4)]
    summary = summarize(recs, batch_size=8, num_stages=2, stage_stats=[{"index": 0}, {"index": 1}],
                        prefetch_stalls=0, prefetch_stall_s=0.0)
    doc = build_result(run_id="r", sweep_id=None, status="ok", error=None, config=config, environment=[],
                       batches=[r.to_json(10.0) for r in recs], summary=summary,
                       validity=validity(warmup=1, counted=4, duration_s=3.5, min_batches=5, min_duration_s=0))
    doc.update(over)
    return doc


def test_summary_figures():
    doc = _doc()
    s = doc["summary"]
    assert s["throughput_batch_s"] == pytest.approx(4 / 3.5)
    assert s["throughput_img_s"] == pytest.approx(32 / 3.5)
    assert s["latency_s"]["mean"] == pytest.approx(0.5) and s["latency_per_image_s"]["p50"] == pytest.approx(0.5 / 8)
    assert s["compute_s"] == pytest.approx([0.1, 0.2]) and s["payload_bytes"] == 140
    # uncoded hops: raw bytes are the wire bytes, ratio 1, no codec time
    assert s["hops"] == [
        {"bytes": 100, "raw_bytes": 100, "ratio": 1.0, "transfer_s": pytest.approx(0.01), "encode_s": 0.0, "decode_s": 0.0},
        {"bytes": 40, "raw_bytes": 40, "ratio": 1.0, "transfer_s": pytest.approx(0.02), "encode_s": 0.0, "decode_s": 0.0},
    ]
    assert doc["batches"][1]["send_s"] == 1.0 and doc["batches"][1]["queue_wait_s"] == pytest.approx(0.01)
    assert doc["validity"]["min_batches_met"] is False and doc["validity"]["valid"] is False


def test_validate_catches_problems():
    assert validate_result(_doc()) == []
    assert "$: 'summary' is a required property" in validate_result(
        {k: v for k, v in _doc().items() if k != "summary"})
    assert validate_result(_doc(status="failed")) == ["$.error: None is not of type 'string'"]
    assert validate_result(_doc(status="failed", error="")) == ["$.error: '' should be non-empty"]
    bad = _doc()
    bad["batches"][0]["hops"] = []
    assert validate_result(bad) == ["$.batches[0]: needs 2 compute_s entries and 2 hops"]
    bad["config"]["splits"] = [5, 9]
    assert "$.config.stages: must have one entry more than config.splits" in validate_result(bad)


def test_write_is_atomic_and_never_overwrites(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_result(_doc(), path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        write_result(_doc(run_id="other"), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left behind
    with pytest.raises(ValueError, match="schema v1"):
        write_result({"schema": "x"}, tmp_path / "bad.json")


def test_run_id():
    assert run_id(model="vgg16", splits=[3, 9], backend="tcp", network="5 mbit/s", batch_size=8, window=4,
                  repeat=1) == "vgg16-s3_9-tcp-5_mbit_s-b8-w4-r1"


def test_judge_run_one_rule_for_exit_status_and_file(tmp_path):
    from paretopipe.results import judge_run

    def failed(why):
        return _doc(status="failed", error=why)

    ok = tmp_path / "ok.json"
    write_result(_doc(), ok)
    assert judge_run(ok, 0) == ("ok", None)
    # died after writing an ok file: failed, the file set aside, a failed document in its place
    outcome, why = judge_run(ok, -6, failed_doc=failed)
    assert outcome == "failed" and "killed by SIGABRT after writing an ok result" in why
    assert read_result(ok)["status"] == "failed" and read_result(ok)["error"] == why
    assert read_result(tmp_path / "ok.json.died")["status"] == "ok"
    # no file: failed, recorded
    missing = tmp_path / "missing.json"
    outcome, why = judge_run(missing, 3, reason="paretopipe: error: boom", failed_doc=failed)
    assert (outcome, why) == ("failed", "paretopipe: error: boom") and read_result(missing)["status"] == "failed"
    outcome, why = judge_run(tmp_path / "none.json", 0)
    assert outcome == "failed" and "wrote no result file" in why
    # a failed file is failed whatever the exit status
    assert judge_run(missing, 0)[0] == "failed"
