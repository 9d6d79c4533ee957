"""The device-side helper scripts of the roles, without Ansible or root. (The sweep's planner and
runner are paretopipe.plan's, tested in tests/test_plan.py.)"""

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

from tests.ansible.conftest import REPO

STAGECTL = REPO / "roles" / "stage_worker" / "files" / "stagectl.py"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
