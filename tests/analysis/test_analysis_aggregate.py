import csv
import math

import numpy as np
import pytest

from scipy import stats

from analysis import AnalysisError, aggregate, load_runs
from analysis.aggregate import (
    analyse,
    default_reference,
    parse_group_by,
    parse_objectives,
    parse_reference,
)
from analysis.frames import config_points
from analysis.frontier import EXCLUDED
from analysis.metrics import Sense
from analysis.report import write_frontier_csv

from .analysis_fixtures import make_run, write_json


def _runs(tmp_path, specs, seed=0):
    """specs: (split, condition, backend, repeat) tuples; returns the loaded runs (DataFrame)."""
    rng = np.random.default_rng(seed)
    for k, cond, backend, r in specs:
        doc = make_run(k, cond, backend, r, rng)
        write_json(tmp_path / f"{doc['run_id']}.json", doc)
    runs = load_runs([tmp_path])
    assert runs.attrs["skipped"].empty
    return runs


def _points(runs):
    return config_points(aggregate(runs))


def _same_as(runs, target, source, columns=("latency", "throughput")):
    """Give the run(s) of split ``target`` the objective values of split ``source``."""
    src = runs[runs["splits"] == (source,)].iloc[0]
    for c in columns:
        runs.loc[runs["splits"] == (target,), c] = src[c]


def test_repeats_are_aggregated_per_configuration(tmp_path):
    runs = _runs(tmp_path, [(6, "lan", "tcp", r) for r in range(4)] + [(10, "lan", "tcp", 0)])
    table = aggregate(runs)
    assert table["splits"].tolist() == [(6,), (10,)]
    assert table["n_runs"].tolist() == [4, 1]
    six = runs[runs["splits"] == (6,)]
    lat = six["latency"].to_numpy()
    row = table.iloc[0]
    assert row["latency_n"] == 4
    assert row["latency_mean"] == pytest.approx(lat.mean())
    assert row["latency_std"] == pytest.approx(lat.std(ddof=1))
    # the 95% t interval: 3.182 is the two-sided critical value for 3 degrees of freedom
    assert row["latency_ci95"] == pytest.approx(3.182 * lat.std(ddof=1) / 2, rel=2e-4)
    low, high = stats.t.interval(0.95, 3, loc=lat.mean(), scale=stats.sem(lat))
    assert row["latency_ci95"] == pytest.approx((high - low) / 2)
    assert math.isnan(table.iloc[1]["latency_ci95"])  # one repeat: no interval
    assert len(row["compute_s"]) == 2
    assert row["compute_s"][0] == pytest.approx(np.mean([c[0] for c in six["compute_s"]]))
    assert row["run_ids"].split() == sorted(six["run_id"])
    p6 = _points(runs)[0]
    assert (p6.splits, p6.stats["latency"].mean, len(p6.run_ids)) == ((6,), row["latency_mean"], 4)


def test_aggregate_leaves_out_nan_and_rejects_other_tables(tmp_path):
    runs = _runs(tmp_path, [(6, "lan", "tcp", r) for r in range(3)])
    runs.loc[runs.index[0], "latency"] = math.nan
    runs.loc[runs.index[1], "throughput"] = math.inf
    row = aggregate(runs).iloc[0]
    assert row["latency_n"] == 2 and row["throughput_n"] == 2 and row["n_runs"] == 3
    assert row["latency_mean"] == pytest.approx(runs["latency"].iloc[1:].mean())
    with pytest.raises(AnalysisError, match="not a runs table"):
        aggregate(runs.drop(columns=["model"]))


def test_groups_default_and_custom(tmp_path):
    specs = [(k, c, b, 0) for k in (0, 6, 19) for c in ("lan", "wifi-50mbit")
             for b in ("tcp", "rpc")]
    points = _points(_runs(tmp_path, specs))
    objectives = parse_objectives("latency:min,throughput:max")
    results = analyse(points, objectives)
    assert [r.title for r in results] == [
        "mobilenet_v2 · lan · rpc", "mobilenet_v2 · lan · tcp",
        "mobilenet_v2 · wifi-50mbit · rpc", "mobilenet_v2 · wifi-50mbit · tcp"]
    assert all(len(r.points) == 3 for r in results)
    one = analyse(points, objectives, group_by=("model",))
    assert len(one) == 1 and len(one[0].points) == 12
    assert one[0].varying == ("network", "backend")
    p0 = one[0].points[0]
    assert one[0].label(0) == f"k={p0.splits[0]} {p0.get('network')} {p0.get('backend')}"
    # the same reference point for every group, so hypervolumes compare
    assert len({r.reference for r in results}) == 1


def test_frontier_ordering_knee_and_hypervolume_of_a_group(tmp_path):
    points = _points(_runs(tmp_path, [(k, "wifi-50mbit", "tcp", 0) for k in (0, 3, 6, 10, 19)]))
    (result,) = analyse(points, parse_objectives("latency,throughput"))
    ranks = list(result.ranks)
    assert ranks == sorted(ranks)  # frontier first
    values = np.array([[p.mean("latency"), p.mean("throughput")] for p in result.points])
    front = values[np.array(ranks) == 0]
    assert len(front) >= 2  # a real trade-off, so the area below is not a single rectangle
    # recompute by hand: nobody else is at least as good in both and better in one
    for lat, thr in front:
        assert not any((v[0] <= lat and v[1] >= thr) and (v[0] < lat or v[1] > thr)
                       for v in values)
    assert result.knee is not None and result.ranks[result.knee] == 0
    ref_lat, ref_thr = result.reference
    assert ref_lat > values[:, 0].max() and ref_thr < values[:, 1].min()
    # 2-D staircase area by hand
    area, top = 0.0, ref_thr
    for lat, thr in sorted(map(tuple, front), key=lambda t: t[1]):  # low throughput first
        area += (ref_lat - lat) * (thr - top) if thr > top else 0.0
        top = max(top, thr)
    assert result.hypervolume == pytest.approx(area)
    assert 0 < result.hypervolume_normalised <= 1


def test_nan_objective_excludes_points_and_says_why(tmp_path):
    runs = _runs(tmp_path, [(k, "lan", "tcp", 0) for k in (0, 6, 19)])
    points = _points(runs)
    objectives = parse_objectives("latency:min,throughput:max,accuracy:max")
    (result,) = analyse(points, objectives)
    assert set(result.ranks) == {EXCLUDED}
    assert result.knee is None and math.isnan(result.hypervolume)
    assert all(reason == "no value for accuracy" for reason in result.excluded.values())


def test_duplicates_are_kept_and_flagged(tmp_path):
    runs = _runs(tmp_path, [(6, "lan", "tcp", 0), (10, "lan", "tcp", 0)])
    _same_as(runs, 10, 6)
    (result,) = analyse(_points(runs), parse_objectives("latency,throughput"))
    assert result.ranks == (0, 0)
    assert result.duplicates == {0: (1,), 1: (0,)}


def test_parse_objectives():
    objs = parse_objectives("latency_p90:min, throughput:max,energy,payload_bytes:MIN")
    assert [(o.name, o.sense) for o in objs] == [
        ("latency_p90", Sense.MIN), ("throughput", Sense.MAX), ("energy", Sense.MIN),
        ("payload_bytes", Sense.MIN)]
    assert str(objs[0]) == "latency_p90:min"
    for bad, match in [("latency", "at least two"), ("latency,bogus", "unknown metric 'bogus'"),
                       ("latency:up,throughput", "sense must be"),
                       ("latency,latency:max", "given twice")]:
        with pytest.raises(AnalysisError, match=match):
            parse_objectives(bad)


def test_parse_group_by_and_reference():
    assert parse_group_by("model, backend") == ("model", "backend")
    assert parse_group_by("") == ()
    with pytest.raises(AnalysisError, match="unknown column 'splits'"):
        parse_group_by("model,splits")
    objs = parse_objectives("latency,throughput")
    assert parse_reference("latency=2, throughput=0", objs) == {"latency": 2.0, "throughput": 0.0}
    for bad in ("energy=1", "latency", "latency=fast", "latency=nan"):
        with pytest.raises(AnalysisError):
            parse_reference(bad, objs)


def test_explicit_reference_is_used(tmp_path):
    points = _points(_runs(tmp_path, [(k, "lan", "tcp", 0) for k in (0, 3)]))
    objs = parse_objectives("latency,throughput")
    (result,) = analyse(points, objs, reference={"latency": 10.0, "throughput": 0.0})
    assert result.reference == (10.0, 0.0)
    default = default_reference(points, objs)
    assert default[0] < 10.0


def test_frontier_csv_says_which_points_are_duplicates_and_excluded(tmp_path):
    runs = _runs(tmp_path / "runs", [(k, "lan", "tcp", 0) for k in (3, 6, 10)])
    _same_as(runs, 6, 3)
    runs.loc[runs["splits"] == (10,), "throughput"] = math.nan
    results = analyse(_points(runs), parse_objectives("latency,throughput"))
    path = write_frontier_csv(tmp_path / "frontier.csv", results)
    rows = {r["label"]: r for r in csv.DictReader(path.open())}
    assert rows["k=3"]["duplicate_of"] == "k=6" and rows["k=6"]["duplicate_of"] == "k=3"
    assert rows["k=3"]["rank"] == rows["k=6"]["rank"] == "0"
    assert rows["k=10"]["rank"] == "" and rows["k=10"]["on_frontier"] == "false"
    assert rows["k=10"]["excluded_reason"] == "no value for throughput"
    assert rows["k=10"]["throughput_mean"] == "" and rows["k=10"]["throughput_n"] == "0"
