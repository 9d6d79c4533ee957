"""Codecs in the analysis: the three-objective frontier (latency, throughput, agreement) and the
rate-fidelity plots, on fixture result files."""

import csv
import math

import numpy as np
import pytest

from analysis import aggregate, load_runs
from analysis.aggregate import FIDELITY_OBJECTIVES, analyse_fidelity
from analysis.frames import config_points
from analysis.frontier import nondominated_ranks_naive
from analysis.plots import draw_fidelity

from .analysis_fixtures import CODEC_CONDITION, CODECS, MODEL, NUM_BLOCKS, SPLITS, write_codec_sweep, write_sweep
from .test_analysis_cli import _run_cli


@pytest.fixture(scope="module")
def codec_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("codecs") / "results"
    write_codec_sweep(root)
    return root


@pytest.fixture(scope="module")
def points(codec_results):
    return config_points(aggregate(load_runs(codec_results)))


def test_fidelity_frontier_is_the_nondominated_set_of_three_objectives(points):
    (result,) = analyse_fidelity(points)
    assert result.objectives == FIDELITY_OBJECTIVES
    assert len(result.points) == sum(len(CODECS) if k < NUM_BLOCKS else 1 for k in SPLITS)
    values = [[p.mean(o.name) for o in FIDELITY_OBJECTIVES] for p in result.points]
    naive = nondominated_ranks_naive(values, [o.sense for o in FIDELITY_OBJECTIVES])
    assert list(result.ranks) == list(naive)
    front = {result.label(i) for i in result.frontier}
    # int8 at k=10 is the fastest configuration; k=19 (only the logits cross) agrees exactly
    assert front == {"k=10 int8", "k=19 none"}


def test_a_codec_moves_the_frontier(points):
    """Without codecs the frontier is k=19 alone; int8 at k=10 beats it on latency."""
    (with_codecs,) = analyse_fidelity(points)
    (without,) = analyse_fidelity([p for p in points if p.get("codec") == "none"])
    assert {without.label(i) for i in without.frontier} == {"k=19"}
    fastest = with_codecs.points[with_codecs.frontier[0]]
    assert fastest.get("codec") == "int8"
    assert fastest.mean("latency") < min(p.mean("latency") for p in without.points)
    assert fastest.mean("agreement") < 1.0


def test_no_agreement_no_fidelity_section(tmp_path):
    write_sweep(tmp_path / "results")
    runs = load_runs(tmp_path / "results")
    assert analyse_fidelity(config_points(aggregate(runs))) == []
    assert draw_fidelity([], config_points(aggregate(runs)), tmp_path / "plots") == []
    proc = _run_cli(str(tmp_path / "results"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "results" / "analysis"
    assert not (out / "frontier_fidelity.csv").exists()
    assert "Fidelity" not in (out / "report.md").read_text()
    assert "three-objective" not in proc.stdout


def test_only_groups_with_agreement_get_a_fidelity_frontier(tmp_path):
    write_sweep(tmp_path / "results")  # lan and wifi-50mbit, no fidelity
    write_codec_sweep(tmp_path / "results")
    pts = config_points(aggregate(load_runs(tmp_path / "results")))
    results = analyse_fidelity(pts)
    assert [dict(r.group)["network"] for r in results] == [CODEC_CONDITION]
    assert not results[0].excluded


def test_a_configuration_without_agreement_is_excluded_and_listed(points):
    others = [p for p in points if not (p.get("codec") == "fp16" and p.splits == (3,))]
    target = next(p for p in points if p.get("codec") == "fp16" and p.splits == (3,))
    nan = type(target.stats["agreement"])(math.nan, math.nan, math.nan, 0)
    blank = type(target)(target.config, target.run_ids, {**target.stats, "agreement": nan},
                         target.compute_s, target.hop_transfer_s, target.hop_bytes)
    (result,) = analyse_fidelity([*others, blank])
    (i,) = result.excluded
    assert result.label(i) == "k=3 fp16"
    assert result.excluded[i] == "no value for agreement"


def test_report_shows_rate_fidelity_and_three_objective_frontier(codec_results):
    proc = _run_cli(str(codec_results))
    assert proc.returncode == 0, proc.stderr
    out = codec_results / "analysis"
    md = (out / "report.md").read_text()
    assert "## Fidelity: rate and the three-objective frontier" in md
    assert f"](plots/rate_fidelity_{MODEL.replace('_', '-')}.png)" in md
    assert f"](plots/frontier3_{MODEL.replace('_', '-')}_{CODEC_CONDITION}_tcp.png)" in md
    for stem in (f"rate_fidelity_{MODEL.replace('_', '-')}",
                 f"frontier3_{MODEL.replace('_', '-')}_{CODEC_CONDITION}_tcp"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{stem}.{ext}").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("<img") == md.count("![")  # every figure embedded, the new ones too
    assert "three-objective frontier (latency:min, throughput:max, agreement:max)" in proc.stdout
    tail = proc.stdout.split("three-objective frontier")[1]
    assert "k=10 int8" in tail and "k=19 none" in tail

    with (out / "frontier_fidelity.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == sum(len(CODECS) if k < NUM_BLOCKS else 1 for k in SPLITS)
    assert {r["label"] for r in rows if r["on_frontier"] == "true"} == {"k=10 int8", "k=19 none"}
    by_label = {r["label"]: r for r in rows}
    assert float(by_label["k=0 int8"]["agreement_mean"]) < 1.0
    assert float(by_label["k=0 none"]["agreement_mean"]) == 1.0
    # the two-objective frontier.csv is what --objectives asked for, unchanged by the section
    with (out / "frontier.csv").open() as fh:
        assert "agreement_mean" not in next(csv.reader(fh))


def test_rate_fidelity_points_are_bytes_on_the_wire_against_agreement(points):
    """What the figure draws, per split: wire bytes shrink by the codec's ratio, agreement with
    them; none is the uncoded size."""
    for k in SPLITS[:-1]:
        mine = {p.get("codec"): p for p in points if p.splits == (k,)}
        raw = mine["none"].mean("split_bytes")
        for codec, (ratio, _, _) in CODECS.items():
            assert mine[codec].mean("split_bytes") == pytest.approx(raw / ratio, rel=1e-6)
            assert mine[codec].mean("compression_ratio") == pytest.approx(ratio, rel=1e-6)
        assert mine["int8"].mean("agreement") < mine["none"].mean("agreement") == 1.0
    assert np.isfinite([p.mean("agreement") for p in points]).all()
