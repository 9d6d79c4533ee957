"""paretopipe.orchestrate without a testbed: ansible-runner on a syntax check, and the reading of
events (recap, messages, task spans) on events shaped as ansible-runner emits them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from paretopipe.errors import ConfigError
from paretopipe.orchestrate import HostStats, PlaybookRun, _host_stats, run_playbook


def test_run_playbook_gives_status_events_and_progress(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    seen = []
    run = run_playbook("sweep.yml", inventory=inventory, cmdline="--syntax-check",
                       on_event=seen.append, artifacts_dir=tmp_path / "runner")
    assert (run.status, run.rc, run.ok) == ("successful", 0, True)
    assert seen and seen == list(run.events)
    assert (run.artifacts / "stdout").is_file()
    assert "playbook: " in (run.artifacts / "stdout").read_text()


def test_a_run_leaves_the_callers_signal_handlers_as_they_were(tmp_path):
    """ansible-runner alone replaces SIGINT/SIGTERM with a flag setter for good: afterwards the
    process could not be stopped by Ctrl-C or SIGTERM (found when a test run ignored both)."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("localhost ansible_connection=local\n")

    def mine(_signum, _frame):
        pass

    before_int = signal.getsignal(signal.SIGINT)
    before_term = signal.signal(signal.SIGTERM, mine)
    try:
        run = run_playbook("netem.yml", inventory=inventory, cmdline="--syntax-check", artifacts_dir=tmp_path / "r")
        assert run.ok
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, before_term)


def test_ctrl_c_during_a_run_cancels_it_and_then_interrupts_the_caller(tmp_path):
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    sent = []

    def interrupt_once(_event):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, while the playbook runs

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_playbook("netem.yml", inventory=inventory, cmdline="--syntax-check", on_event=interrupt_once,
                     artifacts_dir=tmp_path / "r")
    assert sent and signal.getsignal(signal.SIGINT) is before
    # ansible-runner ended the run itself (it was not torn down mid-way by the interrupt)
    statuses = [f.read_text().strip() for f in (tmp_path / "r" / "artifacts").glob("*/status")]
    assert statuses and statuses[0] in ("canceled", "successful")


def test_mistakes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no playbook .*nope.yml; the suite's playbooks are"):
        run_playbook("nope.yml", inventory=tmp_path)
    with pytest.raises(ConfigError, match="inventory .* does not exist"):
        run_playbook("sweep.yml", inventory=tmp_path / "missing")


def _event(kind: str, created: str, **data) -> dict:
    return {"event": kind, "created": created, "uuid": created, "event_data": data}


def test_recap_messages_and_task_spans_come_from_events():
    events = (
        _event("playbook_on_play_start", "2026-12-01T10:00:00.000000", play="Sweep"),
        _event("playbook_on_task_start", "2026-12-01T10:00:01.000000", task="Plan"),
        _event("runner_on_ok", "2026-12-01T10:00:01.500000", host="pi1", task="Plan",
               res={"msg": "sweep s: 4 runs;\n  0 already done, 4 to run"}),
        _event("playbook_on_task_start", "2026-12-01T10:00:04.250000", task="Run the list"),
        _event("runner_on_failed", "2026-12-01T10:00:30.000000", host="gpu", task="Run the list",
               res={"msg": "1 run(s) failed: x"}, ignore_errors=None),
        _event("playbook_on_stats", "2026-12-01T10:00:31.000000"),
    )
    run = PlaybookRun("sweep.yml", "failed", 2, _host_stats(
        {"ok": {"pi1": 3, "gpu": 2}, "changed": {"pi1": 1}, "failures": {"gpu": 1},
         "dark": {}, "skipped": {"gpu": 4}, "processed": {"pi1": 1, "gpu": 1, "pi2": 1}}),
        events, Path("/nonexistent"))
    assert run.hosts == {"gpu": HostStats(ok=2, failed=1, skipped=4), "pi1": HostStats(ok=3, changed=1),
                         "pi2": HostStats()}
    assert not run.ok
    assert run.messages() == ["sweep s: 4 runs; 0 already done, 4 to run", "1 run(s) failed: x"]
    assert run.failed_tasks() == [("gpu", "Run the list")]
    assert run.task_spans() == [(1.0, "Sweep"), (3.25, "Plan"), (26.75, "Run the list")]


def test_a_reused_artifacts_folder_does_not_carry_check_mode_over(tmp_path):
    """ansible-runner keeps the options of a run in env/ of its folder (cmdline, extravars) and
    reads them back: a `--check` run, or its `-e splits=`, must not carry over to the next run."""
    from paretopipe.orchestrate import run_playbook

    inventory = tmp_path / "hosts.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    folder = tmp_path / "runner"
    run_playbook("netem.yml", inventory=inventory, cmdline="--syntax-check", artifacts_dir=folder,
                 extra_vars={"splits": "0,19"})
    assert (folder / "env" / "cmdline").read_text().strip() == "--syntax-check"
    assert "splits" in (folder / "env" / "extravars").read_text()
    run_playbook("netem.yml", inventory=inventory, cmdline=None, artifacts_dir=folder,
                 extra_vars={"condition": ""})
    assert not (folder / "env" / "cmdline").exists()
    assert "splits" not in (folder / "env" / "extravars").read_text()


def test_ctrl_c_during_a_sweep_stops_it_on_the_devices_before_interrupting_the_caller(tmp_path, capsys):
    """orchestrate.sweep: ansible-runner kills a canceled ansible-playbook with SIGKILL, so the
    playbook cannot stop the runs itself; run_playbook runs playbooks/stop.yml, then re-raises."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    sent = []

    def interrupt_once(_event):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_playbook("sweep.yml", inventory=inventory, cmdline="--syntax-check", on_event=interrupt_once,
                     artifacts_dir=tmp_path / "r")
    err = capsys.readouterr().err
    assert "the sweep was interrupted; stopping its runs on the devices (playbooks/stop.yml)" in err
    assert "no sweep runner was running" in err  # what stop.yml said (no device in this inventory)
    assert list((tmp_path / "r" / "stop" / "artifacts").glob("*/status"))
