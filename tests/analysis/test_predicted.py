"""Predicted against measured: prediction files next to fixture result files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from analysis import aggregate, load_runs
from analysis.frames import config_points
from analysis.frontier import nondominated_ranks_naive
from analysis.pareto import main
from analysis.predicted import compare, load_predictions, mape

from .analysis_fixtures import BATCH, CODEC_CONDITION, MODEL, SPLITS, WINDOW, make_run, write_codec_sweep, write_json

# relative errors the fixture prediction makes, per split (latency, throughput)
ERRORS = {0: (0.10, -0.05), 3: (-0.20, 0.10), 6: (0.05, 0.0), 10: (0.0, 0.30), 14: (0.02, -0.02), 19: (-0.1, 0.1)}


def _prediction(measured: dict[tuple[int, ...], tuple[float, float]], selected: list[int],
                network: str = "lan", extra_splits: tuple[int, ...] = ()) -> dict:
    preds = []
    for k in SPLITS:
        lat, thr = measured[(k,)]
        el, et = ERRORS[k]
        preds.append({"splits": [k], "latency_s": lat * (1 + el), "throughput_img_s": thr * (1 + et)})
    for k in extra_splits:  # predicted but never measured
        preds.append({"splits": [k], "latency_s": 1.0, "throughput_img_s": 1.0})
    return {
        "schema": "paretopipe.prediction", "schema_version": 1, "created_utc": "2026-11-26T23:00:00Z",
        "config": {"model": MODEL, "num_classes": 10, "input_size": 224, "batch_size": BATCH, "window": WINDOW,
                   "backend": "tcp", "network": {"label": network, "delay_s": 0.0005, "rate_bit_s": 1e9,
                                                  "overhead_s": 0.0003},
                   "num_blocks": 19, "stages": 2, "profiles": [], "tolerance": 0.0},
        "predictions": preds,
        "frontier": [[selected[0]]],
        "selected": [[k] for k in selected],
    }


@pytest.fixture()
def sweep(tmp_path) -> tuple[Path, dict[tuple[int, ...], tuple[float, float]]]:
    rng = np.random.default_rng(7)
    results = tmp_path / "results"
    for k in SPLITS:
        write_json(results / f"{MODEL}-s{k}-lan.json", make_run(k, "lan", "tcp", 0, rng))
    points = config_points(aggregate(load_runs(results)))
    measured = {p.splits: (p.mean("latency"), p.mean("throughput")) for p in points}
    return results, measured


def _measured_frontier(measured) -> set[tuple[int, ...]]:
    keys = sorted(measured)
    ranks = nondominated_ranks_naive(np.array([measured[k] for k in keys]), ["min", "max"])
    return {k for k, r in zip(keys, ranks) if r == 0}


def test_errors_mape_and_recall(sweep):
    results, measured = sweep
    front = sorted(_measured_frontier(measured))
    assert front, "the fixture has a frontier"
    selected = [front[0][0], 19]  # finds only the first frontier split (unless 19 is on it too)
    write_json(results / "prediction.json", _prediction(measured, selected))
    preds, bad = load_predictions([results])
    assert not bad and len(preds) == 1
    [c] = compare(preds, config_points(aggregate(load_runs(results))))
    assert [r.splits for r in c.rows] == [(k,) for k in SPLITS]
    for r in c.rows:
        el, et = ERRORS[r.splits[0]]
        assert r.latency_error == pytest.approx(el) and r.throughput_error == pytest.approx(et)
    assert c.latency_mape == pytest.approx(100 * np.mean([abs(e[0]) for e in ERRORS.values()]))
    assert c.throughput_mape == pytest.approx(100 * np.mean([abs(e[1]) for e in ERRORS.values()]))
    # a v1 file: one window and batch size, configurations named by their splits
    assert {key[1:] for key in c.measured_frontier} == {(WINDOW, BATCH, "none")}
    assert {key[0] for key in c.measured_frontier} == set(front)
    found = {s for s in front if s[0] in selected}
    assert {key[0] for key in c.found} == found
    assert c.recall == pytest.approx(len(found) / len(front))
    assert c.full and c.runs_saved == len(SPLITS) - 2


def test_partial_sweep_is_flagged_and_other_conditions_do_not_match(sweep):
    results, measured = sweep
    write_json(results / "prediction.json", _prediction(measured, [0], extra_splits=(1, 2)))
    write_json(results / "other.json", _prediction(measured, [0], network="wan"))
    preds, _ = load_predictions([results])
    by_net = {p.network: c for p, c in zip(preds, compare(preds, config_points(aggregate(load_runs(results)))))}
    assert not by_net["lan"].full and len(by_net["lan"].rows) == len(SPLITS)
    assert by_net["wan"].rows == () and math.isnan(by_net["wan"].recall) and math.isnan(by_net["wan"].latency_mape)


def test_mape_ignores_non_finite():
    assert mape([0.1, -0.3, math.nan]) == pytest.approx(20.0)
    assert math.isnan(mape([]))


def test_malformed_prediction_file_is_skipped(tmp_path):
    write_json(tmp_path / "p.json", {"schema": "paretopipe.prediction", "schema_version": 1, "config": {}})
    write_json(tmp_path / "q.json", {"schema": "paretopipe.prediction", "schema_version": 9})
    preds, bad = load_predictions([tmp_path])
    assert preds == [] and len(bad) == 2 and "malformed prediction file" in bad[0].reason


def test_cli_reports_the_section(sweep, capsys):
    results, measured = sweep
    front = sorted(_measured_frontier(measured))
    write_json(results / "prediction.json", _prediction(measured, [k[0] for k in front]))
    assert main([str(results), "--no-plots"]) == 0
    out = capsys.readouterr()
    assert "predicted vs measured" in out.out and "recall 1" in out.out
    assert "prediction.json" not in out.err  # a prediction file is not reported as a skipped result
    analysis = results / "analysis"
    rows = list(csv.DictReader((analysis / "predicted.csv").open()))
    assert [r["splits"] for r in rows] == [str(k) for k in SPLITS]
    assert float(rows[1]["latency_error"]) == pytest.approx(ERRORS[3][0])
    md = (analysis / "report.md").read_text()
    assert "## Predicted against measured" in md and "| 6 of 6 (full) |" in md
    assert "Predicted against measured" in (analysis / "report.html").read_text()
    assert json.loads((results / "prediction.json").read_text())["schema"] == "paretopipe.prediction"


def test_a_v2_prediction_covers_windows_and_batch_sizes(tmp_path):
    """Schema v2 names each prediction's window and batch size; measured runs match per
    configuration, so one file compares a whole group (model, network, backend)."""
    rng = np.random.default_rng(3)
    results = tmp_path / "results"
    for k in (0, 6):
        for window in (1, 4):
            doc = make_run(k, "lan", "tcp", 0, rng)
            doc["config"]["window"] = window
            doc["run_id"] = doc["run_id"].replace(f"-w{WINDOW}-", f"-w{window}-")
            write_json(results / f"{doc['run_id']}.json", doc)
    points = config_points(aggregate(load_runs(results)))
    measured = {(p.splits, p.get("window"), p.get("batch_size"), "none"): (p.mean("latency"), p.mean("throughput"))
                for p in points}
    assert len(measured) == 4
    preds = [{"splits": list(key[0]), "window": key[1], "batch_size": key[2], "latency_s": lat * 1.1,
              "throughput_img_s": thr} for key, (lat, thr) in measured.items()]
    preds.append({"splits": [19], "window": 4, "batch_size": BATCH, "latency_s": 9.0, "throughput_img_s": 1.0})
    chosen = [{"splits": [6], "window": 4, "batch_size": BATCH}]
    write_json(results / "prediction.json", {
        "schema": "paretopipe.prediction", "schema_version": 2, "created_utc": "2026-12-01T00:00:00Z",
        "config": {"model": MODEL, "num_classes": 10, "input_size": 224, "batch_sizes": [BATCH],
                   "windows": [1, 4], "backend": "tcp", "network": {"label": "lan"}, "num_blocks": 19,
                   "stages": 2, "profiles": [], "tolerance": 0.0},
        "predictions": preds, "frontier": chosen, "selected": chosen})
    [pred], bad = load_predictions([results])
    assert not bad and pred.windows == [1, 4] and pred.batch_sizes == [BATCH]
    [c] = compare([pred], points)
    assert {r.key for r in c.rows} == set(measured) and not c.full  # k=19 w4 was never measured
    assert all(r.latency_error == pytest.approx(0.1) for r in c.rows)
    assert {r.label for r in c.rows} == {f"k={k} w{w} b{BATCH}" for k in (0, 6) for w in (1, 4)}
    assert c.title.endswith(f"w1,4 · b{BATCH}")


def test_a_v3_prediction_matches_measured_runs_by_codec(tmp_path):
    """Schema v3 names each prediction's codec; a coded run matches its codec's prediction only."""
    write_codec_sweep(tmp_path)
    points = config_points(aggregate(load_runs(tmp_path)))
    measured = {(p.splits, p.get("window"), p.get("batch_size"), p.get("codec")): p.mean("latency") for p in points}
    assert {k[3] for k in measured} == {"none", "fp16", "int8"}
    preds = [{"splits": list(k[0]), "window": k[1], "batch_size": k[2], "codec": k[3], "latency_s": lat * 1.2,
              "throughput_img_s": BATCH / lat} for k, lat in measured.items() if k[3] in ("none", "int8")]
    chosen = [{"splits": [0], "window": 1, "batch_size": BATCH, "codec": "int8"}]
    write_json(tmp_path / "prediction.json", {
        "schema": "paretopipe.prediction", "schema_version": 3, "created_utc": "2026-12-02T00:00:00Z",
        "config": {"model": MODEL, "num_classes": 10, "input_size": 32, "batch_sizes": [BATCH], "windows": [1],
                   "codecs": ["int8", "none"], "backend": "tcp", "network": {"label": CODEC_CONDITION},
                   "num_blocks": 19, "stages": 2, "profiles": [], "tolerance": 0.0},
        "predictions": preds, "frontier": chosen, "selected": chosen})
    [pred], bad = load_predictions([tmp_path])
    assert not bad
    [c] = compare([pred], points)
    assert {r.key for r in c.rows} == {k for k in measured if k[3] in ("none", "int8")}  # fp16 was not predicted
    assert all(r.latency_error == pytest.approx(0.2) for r in c.rows)
    assert f"k=0 w1 b{BATCH} int8" in {r.label for r in c.rows} and c.full
