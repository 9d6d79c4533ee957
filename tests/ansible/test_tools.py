"""The device-side and controller-side helper scripts of the roles, without Ansible or root."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.ansible.conftest import REPO

STAGECTL = REPO / "roles" / "stage_worker" / "files" / "stagectl.py"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan = load(REPO / "roles" / "sweep" / "files" / "plan.py")


def test_splits_for_two_devices() -> None:
    assert plan.parse_splits("all", 4, 1) == [(0,), (1,), (2,), (3,), (4,)]
    assert plan.parse_splits("0,4,9", 23, 1) == [(0,), (4,), (9,)]
    assert plan.parse_splits([9, 0], 23, 1) == [(0,), (9,)]


def test_splits_for_three_devices_are_pairs() -> None:
    assert plan.parse_splits("0,4,9", 23, 2) == [(0, 0), (0, 4), (0, 9), (4, 4), (4, 9), (9, 9)]
    assert plan.parse_splits("3:9", 23, 2) == [(3, 9)]
    assert len(plan.parse_splits("all", 23, 2)) == 24 * 25 // 2


@pytest.mark.parametrize("bad, fragment", [("24", "out of range"), ("x", "not a number"), ("", "empty"),
                                           ("9:3", "non-decreasing")])
def test_bad_splits_name_the_fix(bad: str, fragment: str) -> None:
    with pytest.raises(plan.PlanError, match=fragment):
        plan.parse_splits(bad, 23, 2 if ":" in bad else 1)


def test_plan_leaves_out_finished_runs(tmp_path: Path) -> None:
    settings = {"model": "mobilenet_v2", "splits": "0,9", "conditions": ["lan", "wan"], "backends": ["tcp"],
                "repeats": 1, "batch_size": 8, "window": 1, "warmup": 5, "batches": 50, "duration": 0,
                "min_batches": 20, "min_duration": 0, "input": "synthetic", "input_size": 0, "num_classes": 10,
                "seed": 0, "sweep_id": "s", "results_dir": str(tmp_path), "device_results_dir": "/dev-results",
                "chain": ["pi1", "gpu"], "chain_ips": ["10.0.0.1", "10.0.0.2"], "source_device": "cpu",
                "source_threads": 0, "worker_port_base": 29500, "connect_timeout": 60, "receive_timeout": 60}
    (tmp_path / "mobilenet_v2-s0-tcp-lan-b8-w1-r0.json").write_text(json.dumps({"status": "ok"}))
    (tmp_path / "mobilenet_v2-s9-tcp-lan-b8-w1-r0.json").write_text(json.dumps({"status": "failed"}))
    doc = plan.plan(settings)
    assert (doc["total"], doc["done"], doc["pending"]) == (4, 1, 3)
    runs = {c["condition"]: [r["run_id"] for r in c["runs"]] for c in doc["rounds"]}
    assert runs == {"lan": ["mobilenet_v2-s9-tcp-lan-b8-w1-r0"],
                    "wan": ["mobilenet_v2-s0-tcp-wan-b8-w1-r0", "mobilenet_v2-s9-tcp-wan-b8-w1-r0"]}
    run = doc["rounds"][1]["runs"][1]
    assert run["stages"] == ["10.0.0.2:29500"] and run["out"] == "/dev-results/mobilenet_v2-s9-tcp-wan-b8-w1-r0.json"
    assert run["batches"] == 50 and run["duration_s"] is None and run["threads"] is None


def _stagectl(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(STAGECTL), *args], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return json.loads(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _child(rundir: Path, old: int | None = None, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int((rundir / "w.child.pid").read_text().split()[0])
            if pid != old and _alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("no (new) worker process")


def test_stagectl_restarts_a_killed_worker_and_stops_everything(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    started = _stagectl("start", "w", "--rundir", str(tmp_path), "--max-restarts", "2", "--", *sleeper)
    assert started["changed"] is True
    supervisor = started["pid"]
    try:
        again = _stagectl("start", "w", "--rundir", str(tmp_path), "--", *sleeper)
        assert again == {**started, "changed": False}
        first = _child(tmp_path)
        os.kill(first, signal.SIGKILL)  # a worker killed mid-sweep
        second = _child(tmp_path, old=first)
        assert second != first and _alive(supervisor)
        assert "restarting (1/2)" in (tmp_path / "w.log").read_text()
    finally:
        stopped = _stagectl("stop", "w", "--rundir", str(tmp_path), "--timeout", "5")
    assert stopped["changed"] is True
    deadline = time.monotonic() + 10  # stop waited for them; the kernel reaps them at once
    while (_alive(supervisor) or _alive(second)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(supervisor) and not _alive(second)
    assert not (tmp_path / "w.pid").exists()
    assert _stagectl("stop", "w", "--rundir", str(tmp_path))["changed"] is False


def test_stagectl_gives_up_after_max_restarts(tmp_path: Path) -> None:
    started = _stagectl("start", "w", "--rundir", str(tmp_path), "--max-restarts", "1", "--",
                        sys.executable, "-c", "raise SystemExit(3)")
    deadline = time.monotonic() + 20
    while _alive(started["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(started["pid"])
    assert "giving up" in (tmp_path / "w.log").read_text()
    assert _stagectl("stop", "w", "--rundir", str(tmp_path))["changed"] is False
