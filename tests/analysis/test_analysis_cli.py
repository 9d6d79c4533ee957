"""``python -m analysis.pareto`` end to end on fixture results."""

import contextlib
import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from analysis.frontier import nondominated_ranks_naive
from analysis.pareto import main

from .analysis_fixtures import (
    BACKENDS,
    CONDITIONS,
    MODEL,
    REPEATS,
    SPLITS,
    legacy_doc,
    make_run,
    write_json,
    write_sweep,
)

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m analysis.pareto ARGS`, in this process (main(argv)): same exit status, stdout
    and stderr, without the cost of a new interpreter."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return subprocess.CompletedProcess(["analysis.pareto", *args], code, out.getvalue(), err.getvalue())


def _write_legacy(results: Path) -> list[Path]:
    out = []
    for k, (lat, thr) in {3: (0.52, 12.0), 6: (0.48, 14.0), 10: (0.45, 9.0)}.items():
        out.append(write_json(results / "original" / f"{MODEL}_split_{k}_metrics.json",
                              legacy_doc(MODEL, k, 20, latency=lat, throughput=thr,
                                         size=400_000)))
    return out


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    results = tmp_path_factory.mktemp("e2e") / "results"
    written = write_sweep(results)
    legacy = _write_legacy(results)
    stray = write_json(results / "analysis" / "stray.json", {"not": "a result"})
    proc = _run_cli(str(results))
    return {"results": results, "written": written, "legacy": legacy, "stray": stray,
            "proc": proc, "out": results / "analysis"}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_cli_succeeds_and_reports_skipped_files(e2e):
    proc = e2e["proc"]
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err
    assert f"skipped {e2e['written']['corrupt']}: corrupt JSON" in err
    assert f"skipped {e2e['written']['failed']}: failed run: stage 1 at" in err
    assert "stray.json" not in err  # the output folder is never read
    n_ok = len(CONDITIONS) * len(BACKENDS) * len(SPLITS) * REPEATS
    assert f"{n_ok + len(e2e['legacy'])} runs loaded, 2 skipped" in err


def test_cli_writes_every_output(e2e):
    out = e2e["out"]
    for name in ("frontier.csv", "groups.csv", "runs.csv", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    plots = out / "plots"
    for cond in CONDITIONS:
        for backend in BACKENDS:
            for kind in ("scatter", "breakdown"):
                for ext in ("png", "svg"):
                    assert (plots / f"{kind}_mobilenet-v2_{cond}_{backend}.{ext}").is_file()
    for kind in ("bytes", "conditions", "backends"):
        for ext in ("png", "svg"):
            assert (plots / f"{kind}_mobilenet-v2.{ext}").is_file()
    assert (plots / "scatter_mobilenet-v2_delay=20ms_legacy.png").is_file()
    png = (plots / "scatter_mobilenet-v2_lan_tcp.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert b"<svg" in (plots / "conditions_mobilenet-v2.svg").read_bytes()[:500]


def test_frontier_csv_matches_an_independent_computation(e2e):
    # recompute from the raw files: mean latency/throughput per (condition, backend, split)
    means = defaultdict(list)
    for path in e2e["written"]["ok"]:
        doc = json.loads(path.read_text())
        c = doc["config"]
        means[(c["network"]["label"], c["backend"], c["splits"][0])].append(
            (doc["summary"]["latency_s"]["mean"], doc["summary"]["throughput_img_s"]))
    rows = _csv(e2e["out"] / "frontier.csv")
    by_group = defaultdict(dict)
    for row in rows:
        by_group[(row["network"], row["backend"])][int(row["splits"])] = row
    assert set(by_group) == {*((c, b) for c in CONDITIONS for b in BACKENDS),
                             ("delay=20ms", "legacy")}
    for cond in CONDITIONS:
        for backend in BACKENDS:
            group = by_group[(cond, backend)]
            assert sorted(group) == sorted(SPLITS)
            values = [np.mean(means[(cond, backend, k)], axis=0).tolist() for k in SPLITS]
            ranks = nondominated_ranks_naive(values, ["min", "max"])
            for k, v, rank in zip(SPLITS, values, ranks):
                row = group[k]
                assert int(row["rank"]) == rank
                assert row["on_frontier"] == ("true" if rank == 0 else "false")
                assert float(row["latency_mean"]) == pytest.approx(v[0], rel=1e-9)
                assert float(row["throughput_mean"]) == pytest.approx(v[1], rel=1e-9)
                assert int(row["n_runs"]) == REPEATS == int(row["latency_n"])
                assert float(row["latency_ci95"]) > 0
            knees = [k for k in SPLITS if group[k]["knee"] == "true"]
            assert len(knees) == 1 and group[knees[0]]["rank"] == "0"
    legacy = by_group[("delay=20ms", "legacy")]
    assert {k: r["rank"] for k, r in legacy.items()} == {3: "1", 6: "0", 10: "0"}


def test_groups_and_runs_csv(e2e):
    groups = _csv(e2e["out"] / "groups.csv")
    assert len(groups) == 5
    refs = {(g["reference_latency"], g["reference_throughput"]) for g in groups}
    assert len(refs) == 1  # one reference point for every group
    assert all(float(g["hypervolume"]) > 0 for g in groups)
    runs = _csv(e2e["out"] / "runs.csv")
    assert len(runs) == len(e2e["written"]["ok"]) + len(e2e["legacy"])
    assert {r["source"] for r in runs} == {"paretopipe.run/v1", "paretopipe-original"}


def test_reports_are_complete_and_self_contained(e2e):
    out = e2e["out"]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for text in ("mobilenet_v2 · lan · tcp", "mobilenet_v2 · delay=20ms · legacy",
                 "Skipped files (2)", "corrupt JSON", "knee"):
        assert text in md and text in page
    for link in md.split("](")[1:]:
        target = link.split(")")[0]
        assert (out / target).is_file(), target
    assert page.count("data:image/png;base64,") >= 10
    assert 'src="plots' not in page and "<link" not in page


def test_terminal_table(e2e):
    stdout = e2e["proc"].stdout
    for cond in CONDITIONS:
        for backend in BACKENDS:
            assert f"mobilenet_v2 · {cond} · {backend}:" in stdout
    assert "knee" in stdout and "hypervolume" in stdout


def test_more_objectives_group_by_and_out(tmp_path, capsys):
    results = tmp_path / "results"
    write_sweep(results, seed=5)
    out = tmp_path / "elsewhere"
    rc = main([str(results), "--out", str(out), "--no-plots", "--group-by", "model,network",
               "--objectives", "latency_p90:min,throughput:max,energy:min,payload_bytes:min"])
    assert rc == 0
    rows = _csv(out / "frontier.csv")
    assert {r["group"] for r in rows} == {"mobilenet_v2 · lan", "mobilenet_v2 · wifi-50mbit"}
    for group in {r["group"] for r in rows}:
        mine = [r for r in rows if r["group"] == group]
        values = [[float(r[f"{o}_mean"]) for o in
                   ("latency_p90", "throughput", "energy", "payload_bytes")] for r in mine]
        expected = nondominated_ranks_naive(values, ["min", "max", "min", "min"])
        assert [int(r["rank"]) for r in mine] == expected
        assert all(" tcp" in r["label"] or " rpc" in r["label"] for r in mine)
    assert not (results / "analysis").exists()
    assert "latency_p90 (min)" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/results"], "/nonexistent/results: no such file or directory"),
    (["{tmp}", "--objectives", "latency:min,speed:max"], "unknown metric 'speed'"),
    (["{tmp}", "--objectives", "accuracy,throughput"], "objective 'accuracy' has no value"),
    (["{tmp}/empty"], "no valid runs found"),
])
def test_errors_are_one_line(tmp_path, args, message):
    write_sweep(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "bad.json").write_text("{", encoding="utf-8")
    proc = _run_cli(*(a.replace("{tmp}", str(tmp_path)) for a in args), "--no-plots")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("analysis.pareto: error:") and message in last


def test_help_and_metric_list():
    proc = _run_cli("--help")
    assert proc.returncode == 0
    for text in ("--objectives", "--group-by", "--reference", "latency_p90", "energy"):
        assert text in proc.stdout
    listed = _run_cli("--list-metrics")
    assert listed.returncode == 0 and "throughput" in listed.stdout
    assert _run_cli().returncode == 2  # no PATH: usage error


def test_analysis_does_not_import_torch_or_paretopipe():
    code = ("import sys, analysis.pareto, analysis.report, analysis.plots; "
            "bad = [m for m in ('torch', 'paretopipe') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_report_says_which_auto_configurations_reached_the_target(tmp_path):
    import json

    from analysis.pareto import main

    rng = np.random.default_rng(5)
    results = tmp_path / "results"
    for k in (0, 6, 19):
        for r in range(3):
            write_json(results / f"{MODEL}-s{k}-tcp-lan-r{r}.json", make_run(k, "lan", "tcp", r, rng))
    for k, verdict, runs in ((0, "reached", 3), (6, "max", 10)):
        write_json(results / f"{MODEL}-s{k}-tcp-lan-b8-w1.repeats.json", {
            "schema": "paretopipe.repeats", "schema_version": 1, "created_utc": "2026-12-01T00:00:00Z",
            "model": MODEL, "network": "lan", "backend": "tcp", "config": {"splits": [k], "window": 1, "batch_size": 8},
            "label": f"k={k} w1 b8", "rule": {"mode": "auto", "target": 0.05, "min": 3, "max": 10}, "runs": runs,
            "verdict": verdict, "latency_s": [], "throughput_img_s": [],
            "relative_ci95": {"latency": 0.01 if verdict == "reached" else 0.2, "throughput": 0.02}})
    assert main([str(results), "--no-plots"]) == 0
    report = (results / "analysis" / "report.md").read_text()
    assert "## Repeats (repeats=auto)" in report
    assert "1 of 2 configurations reached the target" in report and "hit the maximum" in report
    assert "k=6 w1 b8" in report.split("## Repeats")[1]
    assert "frontier memberships given the 95% confidence intervals" in report.lower()
    front = (results / "analysis" / "frontier.csv").read_text().splitlines()[0]
    assert "membership_uncertain" in front
    assert not any("repeats.json" in line for line in report.split("## Skipped")[1:])  # not a skipped file
    assert json.loads((results / f"{MODEL}-s0-tcp-lan-b8-w1.repeats.json").read_text())["verdict"] == "reached"


def test_one_run_configurations_are_reported_as_unknown_never_exact(tmp_path):
    """DESIGN 13: a configuration with one run has no confidence interval. The report says how
    many could not be judged and why, names the frontier points among them, and never calls
    them exact; the frontier CSV marks them membership_unknown."""
    rng = np.random.default_rng(7)
    results = tmp_path / "results"
    for k in (0, 6, 19):
        write_json(results / f"{MODEL}-s{k}-tcp-lan-r0.json", make_run(k, "lan", "tcp", 0, rng))
    write_json(results / f"{MODEL}-s6-tcp-lan-r1.json", make_run(6, "lan", "tcp", 1, rng))
    assert main([str(results), "--no-plots"]) == 0
    report = (results / "analysis" / "report.md").read_text()
    assert "exact" not in report.lower().replace("hypervolume is exact", "")
    assert "2 configuration(s) could not be judged (1 run: no confidence interval)" in report
    assert "uncertainty is unknown" in report
    rows = _csv(results / "analysis" / "frontier.csv")
    unknown = {r["splits"]: r["membership_unknown"] for r in rows}
    assert unknown == {"0": "true", "6": "false", "19": "true"}
    assert all(r["membership_uncertain"] == "false" for r in rows if r["membership_unknown"] == "true")


def test_the_report_flags_runs_measured_under_contention(tmp_path):
    """Issue 24: a run whose summary.contention says contended is named with its reason; runs
    from before contention was recorded are counted as not recording it."""
    from paretoio.schema import run_schema_problems

    rng = np.random.default_rng(3)
    results = tmp_path / "results"
    docs = {k: make_run(k, "lan", "tcp", 0, rng) for k in (0, 6, 19)}
    quiet = {"wall_s": 2.0, "cores": 2, "host_busy_cpu_s": 1.0, "steal_fraction": 0.0, "loadavg_1m": [0.5, 0.6],
             "run_cpu_s": 0.9, "others_cpu_s": 0.1, "others_core_share": 0.025, "contended": False, "reason": None}
    docs[0]["summary"]["contention"] = quiet
    docs[6]["summary"]["contention"] = {**quiet, "others_cpu_s": 2.0, "others_core_share": 0.5, "contended": True,
                                        "reason": "other processes used 50% of the host's 2 core(s)"}
    for k, doc in docs.items():
        assert run_schema_problems(doc) == []
        write_json(results / f"{MODEL}-s{k}-tcp-lan-r0.json", doc)
    assert main([str(results), "--no-plots"]) == 0
    report = (results / "analysis" / "report.md").read_text()
    assert "Runs measured under contention (1 of 3)" in report
    assert f"{docs[6]['run_id']} (other processes used 50% of the host's 2 core(s))" in report
    assert "1 run(s) did not record it" in report
