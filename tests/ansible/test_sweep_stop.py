"""Stop means stop (issue 29), on a private emulated testbed: Ctrl-C on `ansible-playbook
playbooks/sweep.yml` stops the runs on the devices and a rerun resumes; a controller that
vanishes (its process and ssh sessions killed) leaves the sweep running, playbooks/stop.yml
stops it from another controller, and a rerun resumes. Needs root. MobileNetV2 at 32 px, two
split points; the first run is made long (duration) so that it is surely in progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from paretopipe.plan import sweep_identity
from paretopipe.polling import poll_until
from tests.ansible.conftest import REPO, EmulatedTestbed, ansible_env, stage_processes, tool
from tests.ansible.test_sweep_playbook import SMALL, ok, said

pytestmark = [pytest.mark.root, pytest.mark.slow]

LONG = {**SMALL, "splits": "0,19", "conditions": "lan", "backends": "tcp", "duration": "600"}
SHORT = {**LONG, "duration": "0"}  # the same sweep, runs of SMALL's 4 batches: the rerun that resumes
FIRST = "mobilenet_v2-s0-tcp-lan-b2-w1-r0"


def _start(testbed: EmulatedTestbed, name: str, **extra: str) -> tuple[subprocess.Popen, Path]:
    """`ansible-playbook playbooks/sweep.yml -e ...` as a user types it, in its own session."""
    args = {"testbed_topology": str(testbed.topology), "testbed_state_dir": str(testbed.state),
            "results_dir": str(testbed.results), **extra}
    cmd = [tool("ansible-playbook"), str(REPO / "playbooks" / "sweep.yml"), "-i", str(testbed.inventory)]
    for k, v in args.items():
        cmd += ["-e", f"{k}={v}"]
    log = testbed.root / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, log


def _status(testbed: EmulatedTestbed) -> dict:
    try:
        return json.loads((testbed.workdir("pi1") / "run" / "progress.json").read_text())
    except (OSError, ValueError):
        return {}


def _running_first_run(testbed: EmulatedTestbed, proc: subprocess.Popen, log: Path) -> int:
    """Wait until the source's runner is in the first run; its PID."""
    assert poll_until(lambda: proc.poll() is not None or (_status(testbed).get("current") == FIRST
                                                          and not _status(testbed).get("finished")), 900,
                      interval_s=1.0), log.read_text()[-4000:]
    assert proc.poll() is None, log.read_text()[-4000:]
    pid = int(_status(testbed)["pid"])
    assert "estimated " in log.read_text()  # the cost, said before the first run
    return pid


def _device_folder(testbed: EmulatedTestbed, sweep_id: str) -> Path:
    """The source device's copies of the sweep's runs: under the controller's sweep identity (a
    token kept in the controller's results folder, DESIGN decision 14)."""
    return testbed.workdir("pi1") / "results" / sweep_id / sweep_identity(testbed.results / sweep_id, sweep_id)


def _device_file(testbed: EmulatedTestbed, sweep_id: str) -> dict:
    return json.loads((_device_folder(testbed, sweep_id) / f"{FIRST}.json").read_text())


def _resumes(testbed: EmulatedTestbed, sweep_id: str) -> None:
    rerun = testbed.playbook("sweep.yml", **SHORT, sweep_id=sweep_id)
    assert rerun.ok, ok(rerun)
    assert said(rerun, "0 already done, 2 to run"), ok(rerun)
    folder = testbed.results / sweep_id
    assert sorted(p.name for p in folder.glob("*-r0.json")) == [f"{FIRST}.json", "mobilenet_v2-s19-tcp-lan-b2-w1-r0.json"]
    assert json.loads((folder / f"{FIRST}.json").read_text())["status"] == "ok"
    # the interrupted run's file was set aside on the device, not taken for done
    assert list(_device_folder(testbed, sweep_id).glob(f"{FIRST}.failed-*.json"))
    assert stage_processes(testbed) == []


def test_ctrl_c_stops_the_runs_on_the_devices_and_the_same_command_resumes(testbed: EmulatedTestbed) -> None:
    proc, log = _start(testbed, "ctrl-c", **LONG, sweep_id="ctrl-c")
    _running_first_run(testbed, proc, log)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the whole foreground group
    proc.wait(timeout=300)
    text = log.read_text()
    assert "User interrupted execution" in text and "stopping the sweep's runs on the devices" in text, text[-4000:]
    assert "interrupted run " + FIRST in text and "run the same sweep command again to resume" in text, text[-4000:]
    assert poll_until(lambda: stage_processes(testbed) == [], 30, interval_s=1.0), stage_processes(testbed)
    doc = _device_file(testbed, "ctrl-c")
    assert doc["status"] == "failed" and doc["error"].startswith("interrupted by SIGTERM"), doc["error"]
    _resumes(testbed, "ctrl-c")


def test_a_vanished_controller_leaves_the_sweep_running_and_stop_yml_stops_it(testbed: EmulatedTestbed) -> None:
    proc, log = _start(testbed, "vanished", **LONG, sweep_id="vanished")
    runner = _running_first_run(testbed, proc, log)
    os.killpg(proc.pid, signal.SIGKILL)  # the controller is gone: ansible-playbook and its ssh sessions
    proc.wait(timeout=30)
    assert not poll_until(lambda: not _alive(runner), 10, interval_s=1.0), "the runner died with its controller"
    assert _status(testbed).get("current") == FIRST

    stop = testbed.playbook("stop.yml")
    assert stop.ok, ok(stop)
    assert said(stop, f"sweep stopped (pi1: interrupted run {FIRST})"), ok(stop)
    assert said(stop, "stage workers stopped: stage-tcp"), ok(stop)
    assert not _alive(runner) and stage_processes(testbed) == []
    assert _device_file(testbed, "vanished")["error"].startswith("interrupted by SIGTERM")
    again = testbed.playbook("stop.yml")  # nothing left: says so
    assert again.ok and said(again, "no sweep runner was running"), ok(again)
    _resumes(testbed, "vanished")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
