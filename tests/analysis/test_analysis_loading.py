import copy
import json
import math

import numpy as np
import pytest

from analysis import AnalysisError
from analysis.loading import LEGACY_BACKEND, LEGACY_SOURCE, V1_SOURCE, load_results
from analysis.metrics import METRICS

from .analysis_fixtures import legacy_doc, make_run, write_json


@pytest.fixture()
def doc():
    return make_run(6, "lan", "tcp", 0, np.random.default_rng(0))


def test_v1_run_maps_every_metric(tmp_path, doc):
    write_json(tmp_path / "a.json", doc)
    result = load_results([tmp_path])
    assert result.skipped == ()
    (run,) = result.runs
    s = doc["summary"]
    assert run.source == V1_SOURCE
    assert (run.model, run.network, run.backend) == ("mobilenet_v2", "lan", "tcp")
    assert (run.splits, run.batch_size, run.window, run.repeat) == ((6,), 8, 4, 0)
    assert run.placement == "pi1:cpu>jetson1:cuda"
    assert set(run.metrics) == set(METRICS)
    m = run.metrics
    assert m["latency"] == s["latency_s"]["mean"]
    assert m["latency_p90"] == s["latency_s"]["p90"]
    assert m["latency_per_image"] == s["latency_per_image_s"]["mean"]
    assert m["throughput"] == s["throughput_img_s"]
    assert m["payload_bytes"] == s["payload_bytes"]
    assert m["split_bytes"] == s["hops"][0]["bytes"]
    assert m["compute"] == pytest.approx(sum(s["compute_s"]))
    assert m["transfer"] == pytest.approx(sum(h["transfer_s"] for h in s["hops"]))
    assert m["energy"] == s["stages"][1]["energy_j"]  # only the CUDA stage reports energy
    assert m["energy_per_image"] == pytest.approx(m["energy"] / (50 * 8))
    assert m["cpu_percent"] == pytest.approx(sum(st["cpu_percent"] for st in s["stages"]))
    assert m["peak_rss"] == 1_512_000_000
    assert math.isnan(m["accuracy"])  # null in the file
    assert run.compute_s == tuple(s["compute_s"])


def test_legacy_file_is_mapped(tmp_path):
    doc = legacy_doc("vgg16", 7, 20, latency=0.9, throughput=11.5, size=802816,
                     part1=0.3, part2=0.4, net=0.15)
    write_json(tmp_path / "old" / "vgg16_split_7_metrics.json", doc)
    (run,) = load_results([tmp_path]).runs
    assert run.source == LEGACY_SOURCE
    assert (run.model, run.splits, run.backend, run.network) == (
        "vgg16", (7,), LEGACY_BACKEND, "delay=20ms")
    assert run.batch_size is None and run.window is None
    assert run.metrics["latency"] == 0.9
    assert run.metrics["throughput"] == 11.5
    assert run.metrics["payload_bytes"] == 802816
    assert run.metrics["compute"] == pytest.approx(0.7)
    assert run.metrics["transfer"] == 0.15
    assert math.isnan(run.metrics["latency_p90"]) and math.isnan(run.metrics["energy"])
    assert run.compute_s == (0.3, 0.4) and run.hop_bytes == (802816,)


def test_legacy_delay_label_and_mismatched_name(tmp_path):
    write_json(tmp_path / "m_split_1_metrics.json",
               legacy_doc("m", 1, 2.5, latency=1, throughput=1, size=1))
    write_json(tmp_path / "m_split_2_metrics.json",
               legacy_doc("m", 3, 0, latency=1, throughput=1, size=1))
    result = load_results([tmp_path])
    assert [r.network for r in result.runs] == ["delay=2.5ms"]
    (skip,) = result.skipped
    assert "file name says m split 2 but the content says m split 3" in skip.reason


def test_corrupt_file_among_good_ones(tmp_path, doc):
    for r in range(3):
        d = copy.deepcopy(doc)
        d["run_id"] = f"run-{r}"
        write_json(tmp_path / f"run-{r}.json", d)
    (tmp_path / "run-9.json").write_text('{"schema": "paretopipe.run", "sch', encoding="utf-8")
    result = load_results([tmp_path])
    assert len(result.runs) == 3
    (skip,) = result.skipped
    assert skip.path.name == "run-9.json" and skip.reason.startswith("corrupt JSON")
    assert result.files_seen == 4


@pytest.mark.parametrize("change,reason", [
    (lambda d: d.update(schema="other.thing"), "unknown schema 'other.thing'"),
    (lambda d: d.update(schema_version=2), "unknown schema_version 2"),
    (lambda d: d.update(status="failed", error="stage 1 crashed"), "failed run: stage 1 crashed"),
    (lambda d: d.update(status="weird"), "$.status: 'weird' is not one of ['ok', 'failed']"),
    (lambda d: d["config"].pop("model"), "$.config: 'model' is a required property"),
    (lambda d: d["config"]["network"].pop("label"),
     "$.config.network: 'label' is a required property"),
    (lambda d: d["summary"]["latency_s"].pop("mean"),
     "$.summary.latency_s: 'mean' is a required property"),
    (lambda d: d["summary"].update(throughput_img_s="fast"),
     "$.summary.throughput_img_s: 'fast' is not of type 'number', 'null'"),
    (lambda d: d["config"].update(splits="5"), "$.config.splits: '5' is not of type 'array'"),
    (lambda d: d["config"].update(batch_size=0),
     "$.config.batch_size: 0 is less than the minimum of 1"),
    (lambda d: d["validity"].update(valid=False), "invalid run"),
    (lambda d: d.pop("validity"), "$: 'validity' is a required property"),
])
def test_unusable_v1_files_are_skipped_with_a_reason(tmp_path, doc, change, reason):
    change(doc)
    write_json(tmp_path / "x.json", doc)
    result = load_results([tmp_path])
    assert result.runs == ()
    (skip,) = result.skipped
    assert reason in skip.reason


def test_include_invalid_keeps_invalid_runs(tmp_path, doc):
    doc["validity"]["valid"] = False
    write_json(tmp_path / "x.json", doc)
    (run,) = load_results([tmp_path], include_invalid=True).runs
    assert run.valid is False


def test_other_json_and_non_objects_are_skipped(tmp_path):
    write_json(tmp_path / "manifest.json", {"sweep": "x"})
    write_json(tmp_path / "list.json", [1, 2])
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    reasons = sorted(s.reason for s in load_results([tmp_path]).skipped)
    assert reasons[0].startswith("not a result file: no 'schema' key")
    assert reasons[1] == "not a result file: top level is not a JSON object"
    assert reasons[2].startswith("unreadable")


def test_null_summary_values_become_nan(tmp_path, doc):
    doc["summary"]["latency_s"]["p90"] = None
    doc["summary"]["stages"][1].pop("energy_j")
    write_json(tmp_path / "x.json", doc)
    (run,) = load_results([tmp_path]).runs
    assert math.isnan(run.metrics["latency_p90"]) and math.isnan(run.metrics["energy"])


def test_duplicate_run_id_is_not_a_second_repeat(tmp_path, doc):
    write_json(tmp_path / "a" / "x.json", doc)
    write_json(tmp_path / "b" / "x.json", doc)
    result = load_results([tmp_path])
    assert len(result.runs) == 1
    assert "duplicate of run" in result.skipped[0].reason


def test_recursion_exclusion_and_bad_paths(tmp_path, doc):
    write_json(tmp_path / "deep" / "er" / "x.json", doc)
    write_json(tmp_path / "analysis" / "y.json", doc)  # pretend output folder
    (tmp_path / "notes.txt").write_text("not json")
    result = load_results([tmp_path], exclude=[tmp_path / "analysis"])
    assert [r.path.name for r in result.runs] == ["x.json"]
    assert load_results([tmp_path / "deep" / "er" / "x.json"]).runs[0].path.name == "x.json"
    with pytest.raises(AnalysisError, match="no such file or directory"):
        load_results([tmp_path / "missing"])


def test_json_nan_in_file_is_tolerated(tmp_path, doc):
    text = json.dumps(doc).replace('"accuracy_top1": null', '"accuracy_top1": NaN')
    (tmp_path / "x.json").write_text(text, encoding="utf-8")
    (run,) = load_results([tmp_path]).runs
    assert math.isnan(run.metrics["accuracy"])
