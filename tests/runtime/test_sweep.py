"""`paretopipe sweep`: local workers, resume, failures recorded, workers always stopped."""

from __future__ import annotations

import io
from pathlib import Path

import psutil
import pytest

from paretopipe.errors import ConfigError
from paretopipe.results import read_result, validate_result
from paretopipe.runtime.source import RunConfig
from paretopipe.runtime.sweep import SweepConfig, parse_splits, sweep
from paretopipe.runtime.worker import FAULT_ENV

SMALL = {"batch_size": 2, "input_size": 64, "batches": 2, "warmup": 1, "min_batches": 1, "threads": 1,
         "timeout_s": 20, "connect_timeout_s": 30}


def _sweep_cfg(model: str, out: Path, **kw) -> SweepConfig:
    return SweepConfig(run=RunConfig(model=model, splits=(), stages=(), out=Path(), **SMALL), out=out, **kw)


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_sweep_records_a_failure_goes_on_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sw-resnet18"
    marker = tmp_path / "crashed-once"
    # the first session any worker serves crashes it (once): run 1 fails, the sweep restarts the worker
    monkeypatch.setenv(FAULT_ENV, f"2,{marker}")
    before = _children()
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5,3:7", repeats=1), stream=log)
    text = log.getvalue()
    assert rc == 1, text
    assert _children() == before  # every worker stopped
    first = read_result(out / "resnet18-s5-tcp-none-b2-w1-r0.json")
    second = read_result(out / "resnet18-s3_7-tcp-none-b2-w1-r0.json")  # a three-stage chain
    assert first["status"] == "failed" and "stage 1" in first["error"]
    assert second["status"] == "ok" and second["sweep_id"] == "sw-resnet18"
    assert second["config"]["splits"] == [3, 7] and len(second["config"]["stages"]) == 3
    assert validate_result(first) == [] and validate_result(second) == []
    assert "[1/2] split 5 repeat 0: FAILED" in text and "restarting it" in text
    assert "[2/2] split 3:7 repeat 0: ok" in text and "1 ok, 0 skipped, 1 failed" in text

    # resume: both files exist, nothing runs again; a new repeat does run
    monkeypatch.delenv(FAULT_ENV)
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5,3:7", repeats=2), stream=log)
    text = log.getvalue()
    assert rc == 0, text
    assert text.count("skipped (result file exists)") == 2
    assert "2 ok, 2 skipped, 0 failed" in text
    assert read_result(out / "resnet18-s3_7-tcp-none-b2-w1-r1.json")["config"]["repeat"] == 1
    assert _children() == before


def test_parse_splits():
    assert parse_splits("all", "resnet18", num_classes=10) == [(k,) for k in range(16)]
    assert parse_splits("3, 5,2:9", "resnet18", num_classes=10) == [(3,), (5,), (2, 9)]
    with pytest.raises(ConfigError, match="0..15"):
        parse_splits("16", "resnet18", num_classes=10)
    with pytest.raises(ConfigError, match="non-decreasing"):
        parse_splits("9:2", "resnet18", num_classes=10)
    with pytest.raises(ConfigError, match="bad --splits item"):
        parse_splits("x", "resnet18", num_classes=10)


def test_a_source_that_dies_after_writing_an_ok_file_is_failed_everywhere(tmp_path, monkeypatch):
    """The one rule (results.judge_run): the sweep's count, its line, the file at the run's name
    and a resume all say failed; the ok file is kept aside under a name no reader takes."""
    from paretopipe.runtime.source import DIE_AFTER_WRITE_ENV

    out = tmp_path / "sw-died"
    monkeypatch.setenv(DIE_AFTER_WRITE_ENV, "1")
    log = io.StringIO()
    rc = sweep(_sweep_cfg("resnet18", out, splits="5", repeats=1), stream=log)
    text = log.getvalue()
    assert rc == 1, text
    assert "0 ok, 0 skipped, 1 failed" in text and "killed by SIGABRT after writing an ok result" in text
    path = out / "resnet18-s5-tcp-none-b2-w1-r0.json"
    doc = read_result(path)
    assert doc["status"] == "failed" and "SIGABRT" in doc["error"] and validate_result(doc) == []
    kept = read_result(path.with_name(path.name + ".died"))
    assert kept["status"] == "ok"  # what the process wrote before it died, for inspection
    assert sorted(p.name for p in out.glob("*.json")) == [path.name]  # the only result file
    monkeypatch.delenv(DIE_AFTER_WRITE_ENV)
    log = io.StringIO()
    assert sweep(_sweep_cfg("resnet18", out, splits="5", repeats=1), stream=log) == 0
    assert "skipped (result file exists)" in log.getvalue()  # the failed file stands (resume rule)
