"""playbooks/sweep.yml and provision.yml, for real, against a private emulated testbed.

Needs root (network namespaces, sshd, tc). A reduced sweep: MobileNetV2 at 32 px, two split
points, two conditions, both backends (tcp and rpc).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from paretopipe.orchestrate import PlaybookRun
from tests.ansible.conftest import EmulatedTestbed, shaped_devices, stage_processes

pytestmark = [pytest.mark.root, pytest.mark.slow]

# as strings, exactly what `-e key=value` on the command line gives the playbook
SMALL = {"model": "mobilenet_v2", "input_size": "32", "batch_sizes": "2", "warmup": "1",
         "batches": "4", "min_batches": "2", "chain": "pi1,gpu"}


def backends() -> list[str]:
    """Both transports, always: a build without one of them fails here rather than covering less."""
    from paretopipe.transport import backend_names

    assert backend_names() == ["rpc", "tcp"], backend_names()
    return ["tcp", "rpc"]


def ok(run: PlaybookRun) -> str:
    """What to show when a playbook run is not what a test expects: status, failed tasks,
    messages, and the tail of Ansible's own output (from ansible-runner's artifacts)."""
    stdout = (run.artifacts / "stdout").read_text(errors="replace") if (
        run.artifacts / "stdout").exists() else ""
    return (f"status={run.status} rc={run.rc} failed={run.failed_tasks()}\n"
            f"messages={run.messages()[-8:]}\n{stdout[-6000:]}")


def said(run: PlaybookRun, text: str) -> bool:
    """Whether a task's message (debug, assert) contains ``text``."""
    return any(text in m for m in run.messages())


def test_reduced_sweep_writes_result_files_and_leaves_nothing(testbed: EmulatedTestbed) -> None:
    names = backends()
    events = []
    proc = testbed.playbook("sweep.yml", **SMALL, splits="0,19", conditions="lan,wifi",
                            backends=",".join(names), sweep_id="reduced", on_event=events.append)
    assert proc.ok, ok(proc)
    assert events and [e["uuid"] for e in events] == [e["uuid"] for e in proc.events]  # progress
    assert {"pi1", "gpu"} <= set(proc.hosts) and all(h.failed == 0 for h in proc.hosts.values())
    assert said(proc, f"{2 * 2 * len(names)} to run")
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


def test_sweep_under_a_trace_condition_replays_it_from_each_runs_first_counted_batch(
        testbed: EmulatedTestbed) -> None:
    """-e conditions=steps-2-50: the netem role shapes the trace (its first segment and the
    follower), every run signals its t0 through the clock file the record names, the follower
    replays each run, and the condition's clearing stops it and leaves nothing shaped."""
    proc = testbed.playbook("sweep.yml", **SMALL, splits="0,19", conditions="steps-2-50", backends="tcp",
                            sweep_id="traced")
    assert proc.ok, ok(proc)
    files = sorted((testbed.results / "traced").glob("*.json"))
    assert {p.name for p in files} == {f"mobilenet_v2-s{k}-tcp-steps-2-50-b2-w1-r0.json" for k in (0, 19)}
    clock = testbed.state / "run" / "trace" / "clock.json"
    for path in files:
        doc = json.loads(path.read_text())
        assert doc["status"] == "ok", (path.name, doc.get("error"))
        net = doc["config"]["network"]
        assert net["configured"]["trace_file"].endswith("steps-2-50.csv")
        assert net["extra"]["trace_clock"] == str(clock) == doc["summary"]["trace"]["replayed_from"]
        assert [b["trace_capacity_mbit"] for b in doc["batches"]] == [50] * 4  # the first 10 s segment
        assert net["extra"]["hops"][0]["configured"]["rate_mbit"] == 50  # checked at rest
    followed = [json.loads(line)["run_id"] for line in (clock.parent / "follow.jsonl").read_text().splitlines()]
    assert sorted(followed) == sorted(json.loads(p.read_text())["run_id"] for p in files), followed
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []
    follower = [line for line in _cmdlines() if "paretopipe.testbed.tracefollow" in line and str(testbed.state) in line]
    assert follower == []


def _cmdlines() -> list[str]:
    from pathlib import Path

    out = []
    for proc in Path("/proc").iterdir():
        try:
            out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


def test_killed_worker_fails_that_run_only_and_a_rerun_completes(testbed: EmulatedTestbed) -> None:
    marker = testbed.root / "fault-marker"
    args = {**SMALL, "splits": "0,19", "conditions": "lan", "backends": "tcp",
            "sweep_id": "faulty"}
    # The worker exits abruptly (as a killed process does) after 2 batches of its first session.
    fault = {"worker_env": {"PARETOPIPE_FAULT_EXIT_AFTER": f"2,{marker}"}}
    proc = testbed.playbook("sweep.yml", **args, **fault)
    assert proc.status == "failed" and proc.rc != 0, ok(proc)
    assert said(proc, "1 run(s) failed"), ok(proc)
    folder = testbed.results / "faulty"
    ok_files = sorted(p.name for p in folder.glob("*-r0.json"))
    failed = sorted(p.name for p in folder.glob("*.failed-*.json"))
    assert len(failed) == 1 and failed[0].startswith("mobilenet_v2-s0-tcp-lan"), (ok_files, failed)
    assert ok_files == ["mobilenet_v2-s19-tcp-lan-b2-w1-r0.json"]
    assert json.loads((folder / failed[0]).read_text())["status"] == "failed"
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []

    rerun = testbed.playbook("sweep.yml", **args)
    assert rerun.ok, ok(rerun)
    assert said(rerun, "1 already done, 1 to run"), ok(rerun)
    assert sorted(p.name for p in folder.glob("*-r0.json")) == sorted(
        f"mobilenet_v2-s{k}-tcp-lan-b2-w1-r0.json" for k in (0, 19))
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []

    # The same sweep id into a new results folder: fresh runs, never the source's copies of the
    # earlier sweep (DESIGN 14); the plan's count and the source's agree.
    fresh = testbed.playbook("sweep.yml", **args, results_dir=str(testbed.root / "fresh-results"))
    assert fresh.ok, ok(fresh)
    assert said(fresh, "0 already done, 2 to run"), ok(fresh)
    summary = yaml.safe_load((testbed.root / "fresh-results" / "faulty" / "sweep-summary.yml").read_text())
    assert summary["runs"]["ok"] == 2 and summary["runs"]["skipped"] == 0, summary["runs"]
    assert stage_processes(testbed) == []


def test_second_provisioning_changes_nothing_and_check_mode_works(testbed: EmulatedTestbed) -> None:
    first = testbed.playbook("provision.yml", model="mobilenet_v2", input_size="32")
    assert first.ok, ok(first)
    second = testbed.playbook("provision.yml", model="mobilenet_v2", input_size="32")
    assert second.ok, ok(second)
    assert set(second.hosts) >= {"pi1", "pi2", "gpu"}, ok(second)
    assert all(h.changed == 0 and h.failed == 0 for h in second.hosts.values()), second.hosts
    changed = [e["event_data"]["task"] for e in second.events
               if e["event"] == "runner_on_ok" and e["event_data"]["res"].get("changed")]
    assert changed == [], changed
    # One of pi2's shard files goes missing: check mode shows the push to pi2 only and makes
    # nothing; a real run pushes the archive again and the copy matches the manifest.
    shards = testbed.workdir("pi2") / "shards" / "mobilenet_v2-c10-s0-32px"
    block = json.loads((shards / "manifest.json").read_text())["blocks"][-1]
    (shards / block["file"]).unlink()
    check = testbed.playbook("provision.yml", check=True, model="mobilenet_v2", input_size="32")
    assert check.ok, ok(check)
    assert all(h.failed == 0 and h.unreachable == 0 for h in check.hosts.values())
    would = {e["event_data"]["host"] for e in check.events if e["event"] == "runner_on_ok"
             and e["event_data"]["task"].startswith("Say what would be pushed")
             and e["event_data"]["res"].get("changed")}
    assert would == {"pi2"}, ok(check)
    assert said(check, f"{block['file']}: missing"), ok(check)
    assert not (shards / block["file"]).exists()
    unpack = "Unpack the shard archive on the device (one transfer)"
    repair = testbed.playbook("provision.yml", model="mobilenet_v2", input_size="32")
    assert repair.ok, ok(repair)
    pushed = {e["event_data"]["host"] for e in repair.events if e["event"] == "runner_on_ok"
              and e["event_data"]["task"] == unpack and e["event_data"]["res"].get("changed")}
    assert pushed == {"pi2"}, ok(repair)
    assert hashlib.sha256((shards / block["file"]).read_bytes()).hexdigest() == block["sha256"]
