"""`paretopipe sweep`: local workers, windows x batch sizes, resume (a failed file is set aside
and rerun), workers always stopped. The planner's own rules are tested in tests/test_plan.py."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from paretopipe.polling import poll_until

from paretopipe.results import read_result, validate_result
from paretopipe.runtime.source import RunConfig
from paretopipe.runtime.sweep import SweepConfig, sweep
from paretopipe.runtime.worker import FAULT_ENV

SMALL = {"batch_size": 2, "input_size": 64, "batches": 2, "warmup": 1, "min_batches": 1, "threads": 1,
         "timeout_s": 20, "connect_timeout_s": 30}


def _sweep_cfg(model: str, out: Path, **kw) -> SweepConfig:
    return SweepConfig(run=RunConfig(model=model, splits=(), stages=(), out=Path(), **SMALL), out=out, **kw)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow  # a sweep of real workers, run twice
def test_sweep_records_a_failure_goes_on_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sw-resnet18"
    marker = tmp_path / "crashed-once"
    # the first session any worker serves crashes it (once): run 1 fails, the sweep restarts the worker
    monkeypatch.setenv(FAULT_ENV, f"2,{marker}")
    before = _children()
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5,3:7", devices=3), stream=log)
    text = log.getvalue()
    assert rc == 1, text
    assert _children() == before  # every worker stopped
    # three devices: the points 5 and the pair 3:7 make the chains 5:5 and 3:7; the first run in
    # the seeded shuffled order (plan.run_order) is the one that crashes
    import re

    first_k = re.search(r"\[1/2\] k=(\S+) w1 b2 tcp none r0: FAILED", text)
    assert first_k, text
    bad, good = ("3_7", "5_5") if first_k.group(1) == "3,7" else ("5_5", "3_7")
    failed = list(out.glob(f"resnet18-s{bad}-tcp-none-b2-w1-r0.failed-*.json"))
    second = read_result(out / f"resnet18-s{good}-tcp-none-b2-w1-r0.json")
    assert len(failed) == 1 and not (out / f"resnet18-s{bad}-tcp-none-b2-w1-r0.json").exists()
    first = read_result(failed[0])
    assert first["status"] == "failed" and "stage" in first["error"]
    assert second["status"] == "ok" and second["sweep_id"] == "sw-resnet18"
    assert second["config"]["splits"] == [int(x) for x in good.split("_")] and len(second["config"]["stages"]) == 3
    assert validate_result(first) == [] and validate_result(second) == []
    assert "restarting it" in text
    assert f"[2/2] k={good.replace('_', ',')} w1 b2 tcp none r0: ok" in text and "1 ok, 0 skipped, 1 failed" in text

    # resume: the ok run is skipped, the failed one runs again
    monkeypatch.delenv(FAULT_ENV)
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5,3:7", devices=3), stream=log)
    text = log.getvalue()
    assert rc == 0, text
    assert "1 already done, 1 to run" in text and "1 ok, 1 skipped, 0 failed" in text
    assert read_result(out / f"resnet18-s{bad}-tcp-none-b2-w1-r0.json")["status"] == "ok"
    assert _children() == before


@pytest.mark.slow  # a sweep of real workers over windows x batch sizes
def test_windows_and_batch_sizes_are_sweep_dimensions(tmp_path):
    out = tmp_path / "sw-dims"
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5", windows=(1, 3), batch_sizes=(1, 2)), stream=log)
    assert rc == 0, log.getvalue()
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == sorted(f"resnet18-s5-tcp-none-b{b}-w{w}-r0.json" for b in (1, 2) for w in (1, 3))
    for name in names:
        doc = read_result(out / name)
        assert (doc["config"]["batch_size"], doc["config"]["window"]) == (int(name.split("-b")[1][0]),
                                                                          int(name.split("-w")[1][0]))
    assert "= 4 configurations" in log.getvalue()
    # the reference logits are kept once per batch size (the window does not change them)
    assert len(list((out / "_cache" / "reference").glob("*.pt"))) == 2


@pytest.mark.slow  # a sweep of real workers whose source dies, then the resume
def test_a_source_that_dies_after_writing_an_ok_file_is_failed_everywhere(tmp_path, monkeypatch):
    """The one rule (results.judge_run): the sweep's count, its line, the file at the run's name
    and a resume all say failed; the ok file is kept aside under a name no reader takes."""
    from paretopipe.runtime.source import DIE_AFTER_WRITE_ENV

    out = tmp_path / "sw-died"
    monkeypatch.setenv(DIE_AFTER_WRITE_ENV, "1")
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5"), stream=log)
    text = log.getvalue()
    assert rc == 1, text
    assert "0 ok, 0 skipped, 1 failed" in text and "killed by SIGABRT after writing an ok result" in text
    path = out / "resnet18-s5-tcp-none-b2-w1-r0.json"
    (aside,) = out.glob("resnet18-s5-tcp-none-b2-w1-r0.failed-*.json")  # set aside at once
    doc = read_result(aside)
    assert doc["status"] == "failed" and "SIGABRT" in doc["error"] and validate_result(doc) == []
    kept = read_result(path.with_name(path.name + ".died"))
    assert kept["status"] == "ok"  # what the process wrote before it died, for inspection
    assert [p.name for p in out.glob("*.json")] == [aside.name]  # no file says ok
    monkeypatch.delenv(DIE_AFTER_WRITE_ENV)
    log = io.StringIO()
    assert sweep(_sweep_cfg("resnet18", out, splits="5"), stream=log) == 0
    assert read_result(path)["status"] == "ok"  # the resume rule: failed files are rerun


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "paretopipe", "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_the_cli_says_the_cost_first_and_an_over_budget_sweep_does_not_start(tmp_path):
    out = tmp_path / "sw"
    proc = _cli("--model", "mobilenet_v2", "--splits", "all", "--out", str(out), "--budget", "1s")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert "24 runs, 0 already done, 24 to run" in stdout and "estimated " in stdout  # the cost, first
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "over its budget" in err[0] and "sweep_budget" not in err[0]
    assert "--budget none" in err[0] and "--splits" in err[0] and "nothing was run" in err[0]
    assert not list(out.glob("*.json"))
    bad = _cli("--model", "mobilenet_v2", "--out", str(out), "--budget", "soon")
    assert bad.communicate(timeout=60)[1].strip().endswith("or none (no budget)") and bad.returncode == 2


def test_sigterm_stops_the_cli_sweep_its_source_and_workers_and_marks_the_run(tmp_path):
    """SIGTERM (and Ctrl-C's SIGINT) to `paretopipe sweep`: the run in progress is stopped, its
    file says failed (interrupted), the workers are stopped, and the plan redoes that run."""
    out = tmp_path / "sw"
    args = ["--model", "mobilenet_v2", "--splits", "0,10", "--out", str(out), "--input-size", "32",
            "--batch-sizes", "2", "--batches", "100000", "--warmup", "1", "--threads", "1", "--budget", "none"]
    proc = _cli(*args)
    logs = out / "_logs"
    assert poll_until(lambda: proc.poll() is not None or (logs.is_dir() and any(logs.glob("mobilenet_v2-*.log"))), 120)
    time.sleep(3)  # the run's source is up and running batches
    started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    assert len(started) >= 2, "a worker and the run's source"
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stdout
    assert not [p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert "interrupted by SIGTERM during run mobilenet_v2-s0-tcp-none-b2-w1-r0" in stdout
    assert "run the same command again to resume" in stdout
    doc = read_result(out / "mobilenet_v2-s0-tcp-none-b2-w1-r0.json")
    assert doc["status"] == "failed" and doc["error"].startswith("interrupted by SIGTERM")
    from paretopipe.plan import run_state

    assert run_state(out / "mobilenet_v2-s0-tcp-none-b2-w1-r0.json")[0] == "other"  # not ok: a rerun redoes it
