"""The public pandas API (analysis.load_runs, aggregate, frontier) on fixture result files."""

import math

import pytest

from analysis import AnalysisError, aggregate, frontier, load_runs
from analysis.frames import RUN_COLUMNS
from analysis.frontier import nondominated_ranks_naive
from analysis.metrics import METRICS

from .analysis_fixtures import BACKENDS, CONDITIONS, REPEATS, SPLITS, write_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    written = write_sweep(root)
    return root, written


def test_load_runs_is_tidy_and_lists_the_skipped_files(sweep):
    root, written = sweep
    runs = load_runs(str(root))  # a str, a Path or a list of either
    assert list(runs.columns) == list(RUN_COLUMNS)
    assert len(runs) == len(written["ok"]) and runs["run_id"].is_unique
    assert runs.attrs["files_seen"] == len(written["ok"]) + 2
    skipped = runs.attrs["skipped"]
    assert list(skipped.columns) == ["path", "reason"]
    assert sorted(skipped["path"]) == sorted([str(written["corrupt"]), str(written["failed"])])
    assert runs["batch_size"].dtype.name == "Int64" and set(runs["batch_size"]) == {8}
    assert runs[list(METRICS)].dtypes.map(lambda d: d.kind == "f").all()
    assert set(runs["num_stages"]) == {2}
    row = runs[runs["run_id"] == "mobilenet_v2-s6-tcp-lan-b8-w4-r0"].iloc[0]
    assert row["placement"] == "pi1:cpu>jetson1:cuda" and row["splits"] == (6,)
    assert math.isnan(row["accuracy"])  # null in the file


def test_aggregate_one_row_per_configuration(sweep):
    configs = aggregate(load_runs(sweep[0]))
    assert len(configs) == len(CONDITIONS) * len(BACKENDS) * len(SPLITS)
    assert (configs["n_runs"] == REPEATS).all() and (configs["latency_n"] == REPEATS).all()
    assert (configs["latency_ci95"] > 0).all()
    assert {"throughput_mean", "throughput_std", "throughput_ci95", "throughput_n"} <= set(configs)


def test_frontier_agrees_with_the_naive_twin_and_filters_work(sweep):
    runs = load_runs(sweep[0])
    tcp = runs[runs["backend"] == "tcp"]  # a researcher's filter, then the frontier
    front = frontier(tcp, objectives=["latency_p90:min", "throughput", "energy"],
                     group_by="network")
    assert set(front["group"]) == set(CONDITIONS) and set(front["backend"]) == {"tcp"}
    for _, group in front.groupby("group"):
        values = group[["latency_p90_mean", "throughput_mean", "energy_mean"]].values.tolist()
        assert group["rank"].tolist() == nondominated_ranks_naive(values, ["min", "max", "min"])
        assert group["knee"].sum() == 1 and group.loc[group["knee"], "rank"].item() == 0
        assert group["group_hypervolume"].nunique() == 1 and group["group_hypervolume"].iloc[0] > 0
    assert set(front.attrs["reference"]) == {"latency_p90", "throughput", "energy"}
    # the same answer from the aggregated table as from the runs
    again = frontier(aggregate(tcp), objectives="latency_p90,throughput,energy", group_by="network")
    assert again["rank"].tolist() == front["rank"].tolist()


def test_api_mistakes_are_analysis_errors(sweep, tmp_path):
    runs = load_runs(sweep[0])
    with pytest.raises(AnalysisError, match="unknown metric 'speed'"):
        frontier(runs, objectives="latency,speed")
    with pytest.raises(AnalysisError, match="unknown column 'colour'"):
        frontier(runs, group_by=("colour",))
    with pytest.raises(AnalysisError, match="no such file or directory"):
        load_runs(tmp_path / "missing")
