"""Upstream ParetoPipe's files as upstream writes them: the custom backend's
``{Model}_split_{k}_metrics.json`` in either name case, and the RPC tester's
``consolidated_metrics.json`` with its ``split_test_results.csv``."""

import json

import pytest

from analysis import frontier, load_runs
from analysis.loading import LEGACY_SOURCE, UPSTREAM_RPC_BACKEND, UPSTREAM_RPC_SOURCE

from .analysis_fixtures import legacy_doc, write_json, write_rpc_session


@pytest.mark.parametrize("name", ["MobileNetV2_split_10_metrics.json",
                                  "mobilenetv2_split_10_metrics.json",
                                  "MOBILENETV2_split_10_metrics.json"])
def test_custom_backend_file_is_read_whatever_the_case_of_its_name(tmp_path, name):
    write_json(tmp_path / name, legacy_doc("MobileNetV2", 10, 20, latency=0.6, throughput=13.3,
                                           size=401408))
    runs = load_runs(tmp_path)
    assert runs.attrs["skipped"].empty
    (row,) = runs.to_dict("records")
    assert row["source"] == LEGACY_SOURCE
    assert row["model"] == "mobilenet_v2"  # upstream's name in torchvision's (our) spelling
    assert (row["splits"], row["network"], row["throughput"]) == ((10,), "delay=20ms", 13.3)


def test_a_name_that_differs_in_more_than_case_is_still_skipped(tmp_path):
    write_json(tmp_path / "ResNet18_split_10_metrics.json",
               legacy_doc("MobileNetV2", 10, 20, latency=0.6, throughput=13.3, size=1))
    runs = load_runs(tmp_path)
    assert runs.empty
    assert "file name says ResNet18 split 10 but the content says MobileNetV2 split 10" in (
        runs.attrs["skipped"]["reason"].iloc[0])


def test_custom_backend_file_that_breaks_upstreams_format_names_the_field(tmp_path):
    doc = legacy_doc("VGG16", 3, 0, latency=1, throughput=1, size=1)
    doc["average_metrics_per_batch"]["network_time_s"] = "slow"
    write_json(tmp_path / "VGG16_split_3_metrics.json", doc)
    (reason,) = load_runs(tmp_path).attrs["skipped"]["reason"]
    assert reason.startswith("does not follow the upstream split metrics schema: "
                             "$.average_metrics_per_batch.network_time_s: 'slow' is not of type")


def test_rpc_tester_session_is_read_with_its_failed_runs_skipped(tmp_path):
    session = write_rpc_session(tmp_path, splits=(3, 10, 17), runs=3, failed=frozenset({(10, 2)}))
    runs = load_runs(tmp_path)
    consolidated = json.loads((session / "consolidated_metrics.json").read_text())
    assert len(runs) == 3 * 3 - 1
    assert set(runs["source"]) == {UPSTREAM_RPC_SOURCE}
    assert set(runs["backend"]) == {UPSTREAM_RPC_BACKEND}
    assert set(runs["model"]) == {"mobilenet_v2"} and set(runs["batch_size"]) == {8}
    assert set(runs["network"]) == {"delay=0.094ms"}
    first = runs[(runs["splits"] == (3,)) & (runs["repeat"] == 1)].iloc[0]
    expected = consolidated["results"]["3"]["run1"]
    assert first["throughput"] == expected["system_inference_throughput_imgs_per_s"]
    assert first["latency"] == expected["average_metrics_per_batch"]["end_to_end_latency_s"]
    assert first["latency_per_image"] == pytest.approx(first["latency"] / 8)
    assert first["split_bytes"] == expected["average_metrics_per_batch"][
        "intermediate_data_size_bytes"]
    skipped = dict(zip(runs.attrs["skipped"]["path"].map(lambda p: p.rsplit("/", 1)[-1]),
                       runs.attrs["skipped"]["reason"]))
    assert skipped == {
        "consolidated_metrics.json": "failed run (split 10, run 2 in split_test_results.csv: "
                                     "failed: Orchestrator timed out)",
        "consolidated_metrics_averaged.json": "upstream averaged metrics "
        "(consolidated_metrics_averaged.json): the means of consolidated_metrics.json, which is "
        "read instead"}


def test_without_the_csv_every_run_of_the_session_counts(tmp_path):
    session = write_rpc_session(tmp_path, splits=(3, 10), runs=2, failed=frozenset({(3, 1)}))
    (session / "split_test_results.csv").unlink()
    assert len(load_runs(session / "consolidated_metrics.json")) == 4


def test_upstream_rpc_runs_and_ours_share_one_frontier_per_model(tmp_path):
    from .analysis_fixtures import write_sweep

    write_sweep(tmp_path / "ours")
    write_rpc_session(tmp_path / "upstream", splits=(3, 10, 17), runs=3)
    front = frontier(load_runs(tmp_path), group_by=("model",))
    assert set(front["group"]) == {"mobilenet_v2"}
    theirs = front[front["backend"] == UPSTREAM_RPC_BACKEND]
    assert sorted(theirs["splits"]) == [(3,), (10,), (17,)]
    assert (theirs["n_runs"] == 3).all()
    assert theirs["rank"].notna().all() and front["on_frontier"].any()
