"""playbooks/sweep.yml and provision.yml, for real, against a private emulated testbed.

Needs root (network namespaces, sshd, tc). A reduced sweep: MobileNetV2 at 32 px, two split
points, two conditions, every backend paretopipe offers (tcp, and rpc once it is there).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.ansible.conftest import REPO, EmulatedTestbed, shaped_devices, stage_processes

pytestmark = [pytest.mark.root, pytest.mark.slow]

SMALL = ["-e", "model=mobilenet_v2", "-e", "input_size=32", "-e", "batch_size=2", "-e", "warmup=1",
         "-e", "batches=4", "-e", "min_batches=2", "-e", "chain=pi1,gpu"]


def backends() -> list[str]:
    """tcp, plus rpc when `paretopipe run --help` offers it (issue 6)."""
    help_text = subprocess.run([sys.executable, "-m", "paretopipe", "run", "--help"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    return ["tcp"] + (["rpc"] if "rpc" in help_text else [])


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    out = {}
    for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", proc.stdout, re.M):
        out[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return out


def ok(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


def test_reduced_sweep_writes_result_files_and_leaves_nothing(testbed: EmulatedTestbed) -> None:
    names = backends()
    proc = testbed.playbook("sweep.yml", *SMALL, "-e", "splits=0,19", "-e", "conditions=lan,wifi",
                            "-e", f"backends={','.join(names)}", "-e", "sweep_id=reduced")
    assert proc.returncode == 0, ok(proc)
    folder = testbed.results / "reduced"
    files = sorted(p for p in folder.glob("*.json"))
    expected = {f"mobilenet_v2-s{k}-{b}-{c}-b2-w1-r0.json"
                for k in (0, 19) for b in names for c in ("lan", "wifi")}
    assert {p.name for p in files} == expected
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["status"] == "ok", (path.name, doc.get("error"))
        assert doc["sweep_id"] == "reduced"
        net = doc["config"]["network"]
        assert net["label"] in ("lan", "wifi")
        assert net["configured"]["rate_mbit"] == {"lan": 1000.0, "wifi": 50.0}[net["label"]]
        assert net["measured"]["rtt_ms"] > 0 and net["measured"]["rate_mbit"] > 0
        assert doc["validity"]["counted_batches"] == 4
    summary = yaml.safe_load((folder / "sweep-summary.yml").read_text())
    assert summary["runs"]["ok"] == len(expected) and summary["runs"]["failed"] == 0
    assert 0 < summary["time_s"]["measured_runs"] < summary["time_s"]["wall"]
    assert (folder / "analysis" / "frontier.csv").is_file()
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []


def test_killed_worker_fails_that_run_only_and_a_rerun_completes(testbed: EmulatedTestbed) -> None:
    marker = testbed.root / "fault-marker"
    args = [*SMALL, "-e", "splits=0,19", "-e", "conditions=lan", "-e", "backends=tcp",
            "-e", "sweep_id=faulty"]
    # The worker exits abruptly (as a killed process does) after 2 batches of its first session.
    fault = json.dumps({"worker_env": {"PARETOPIPE_FAULT_EXIT_AFTER": f"2,{marker}"}})
    proc = testbed.playbook("sweep.yml", *args, "-e", fault)
    assert proc.returncode != 0, ok(proc)
    assert "1 run(s) failed" in proc.stdout, ok(proc)
    folder = testbed.results / "faulty"
    ok_files = sorted(p.name for p in folder.glob("*-r0.json"))
    failed = sorted(p.name for p in folder.glob("*.failed-*.json"))
    assert len(failed) == 1 and failed[0].startswith("mobilenet_v2-s0-tcp-lan"), (ok_files, failed)
    assert ok_files == ["mobilenet_v2-s19-tcp-lan-b2-w1-r0.json"]
    assert json.loads((folder / failed[0]).read_text())["status"] == "failed"
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []

    rerun = testbed.playbook("sweep.yml", *args)
    assert rerun.returncode == 0, ok(rerun)
    assert "1 already done, 1 to run" in rerun.stdout, ok(rerun)
    assert sorted(p.name for p in folder.glob("*-r0.json")) == sorted(
        f"mobilenet_v2-s{k}-tcp-lan-b2-w1-r0.json" for k in (0, 19))
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []


def test_second_provisioning_changes_nothing_and_check_mode_works(testbed: EmulatedTestbed) -> None:
    first = testbed.playbook("provision.yml", "-e", "model=mobilenet_v2", "-e", "input_size=32")
    assert first.returncode == 0, ok(first)
    second = testbed.playbook("provision.yml", "-e", "model=mobilenet_v2", "-e", "input_size=32")
    assert second.returncode == 0, ok(second)
    counters = recap(second)
    assert set(counters) >= {"pi1", "pi2", "gpu"}, ok(second)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counters.values()), counters
    check = testbed.playbook("provision.yml", "-e", "model=mobilenet_v2", "-e", "input_size=32", "--check")
    assert check.returncode == 0, ok(check)
    assert all(c["failed"] == 0 for c in recap(check).values())
