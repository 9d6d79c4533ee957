"""The Ansible suite from Python: ``playbooks/*.yml`` through ansible-runner.

::

    from paretopipe.orchestrate import sweep

    run = sweep(inventory="inventory/emulated", model="mobilenet_v2", splits="0,19",
                on_event=lambda e: print(e["event"]))
    run.status, run.rc          # "successful" / "failed" / "timeout" / "canceled", exit status
    run.hosts["pi1"].changed    # per-host recap counters
    run.messages()              # what the debug / assert tasks said
    run.task_spans()            # (seconds, task) per task, from the event time stamps

The events are ansible-runner's (one dict per playbook event: ``event``, ``event_data`` with
``host``, ``task``, ``res``, ``created`` time stamps, ...), so callers read structured data instead
of Ansible's text output. Extra variables are passed as Ansible extra vars (JSON: numbers stay
numbers, lists and dicts stay what they are). Needs the ``suite`` extra (ansible-core,
ansible-runner); nothing of it is imported by the rest of the package.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError

__all__ = ["HostStats", "PlaybookRun", "run_playbook", "sweep"]

REPO = Path(__file__).resolve().parent.parent
Event = dict[str, Any]
_STAT_KEYS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
              "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}
_MESSAGE_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_item_on_ok", "runner_item_on_failed")


@dataclass(frozen=True)
class HostStats:
    """One host's line of the play recap."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class PlaybookRun:
    """What a playbook run did: status, exit code, per-host recap and every event."""

    playbook: str
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    hosts: Mapping[str, HostStats]
    events: tuple[Event, ...]
    artifacts: Path  # ansible-runner's artifact folder (stdout, job events, command)

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    def messages(self) -> list[str]:
        """The ``msg`` of every task result (debug messages, assert and fail messages), in order."""
        out = []
        for e in self.events:
            if e.get("event") in _MESSAGE_EVENTS:
                msg = e.get("event_data", {}).get("res", {}).get("msg")
                if isinstance(msg, str):
                    out.append(" ".join(msg.split()))
        return out

    def failed_tasks(self) -> list[tuple[str, str]]:
        """(host, task) of every failed task result that was not ignored."""
        return [(e["event_data"].get("host", ""), e["event_data"].get("task", ""))
                for e in self.events if e.get("event") == "runner_on_failed"
                and not e["event_data"].get("ignore_errors")]

    def task_spans(self) -> list[tuple[float, str]]:
        """(seconds, task name) from each task's start to the next task's (or play's) start."""
        marks = [(_dt.datetime.fromisoformat(e["created"]), e["event_data"].get("task")
                  or e["event_data"].get("play", ""))
                 for e in self.events if e.get("event") in ("playbook_on_task_start",
                                                            "playbook_on_play_start",
                                                            "playbook_on_stats")]
        return [((b[0] - a[0]).total_seconds(), a[1]) for a, b in zip(marks, marks[1:])]


def _host_stats(stats: Mapping[str, Mapping[str, int]] | None) -> dict[str, HostStats]:
    per_host: dict[str, dict[str, int]] = {}
    for key, field in _STAT_KEYS.items():
        for host, count in (stats or {}).get(key, {}).items():
            per_host.setdefault(host, {})[field] = int(count)
    for host in (stats or {}).get("processed", {}):
        per_host.setdefault(host, {})
    return {host: HostStats(**counts) for host, counts in sorted(per_host.items())}


def run_playbook(playbook: str, *, inventory: str | os.PathLike[str],
                 extra_vars: Mapping[str, Any] | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 artifacts_dir: str | os.PathLike[str] | None = None,
                 cmdline: str | None = None, timeout: int | None = None) -> PlaybookRun:
    """Run ``playbooks/<playbook>`` of this repository against ``inventory`` with ansible-runner.

    ``on_event`` is called with each event as it happens (progress); the same events come back
    in :attr:`PlaybookRun.events`. ``artifacts_dir``: where ansible-runner keeps its files
    (default: a new temporary folder). ``cmdline``: extra ansible-playbook options (``--check``).
    """
    try:
        import ansible_runner
    except ImportError:
        raise ConfigError("paretopipe.orchestrate needs ansible-runner: pip install "
                          "'paretopipe[suite]'") from None
    book = REPO / "playbooks" / playbook
    if not book.is_file():
        raise ConfigError(f"no playbook {book}; the suite's playbooks are "
                          f"{', '.join(sorted(p.name for p in (REPO / 'playbooks').glob('*.yml')))}")
    inv = Path(inventory).resolve()
    if not inv.exists():
        raise ConfigError(f"inventory {inventory} does not exist")
    private = Path(artifacts_dir) if artifacts_dir else Path(tempfile.mkdtemp(prefix="pp-ansible-"))
    private.mkdir(parents=True, exist_ok=True)
    # ansible-runner reads the options of a run back from the folder's env/ (cmdline, extravars,
    # ...) and adds them to what it is given: an earlier run's `--check` or `-e splits=...` left
    # in a reused folder must not leak into this run. Each run states all of its own.
    shutil.rmtree(private / "env", ignore_errors=True)
    bindir = str(Path(sys.executable).parent)  # ansible-playbook of this environment
    envvars = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0",
               "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    events: list[Event] = []

    def handler(event: Event) -> bool:
        events.append(event)
        if on_event is not None:
            on_event(event)
        return True  # keep the event in the artifacts too

    canceled, restore = _cancel_on_signals()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(REPO), playbook=str(book),
            inventory=str(inv), extravars=dict(extra_vars or {}), envvars=envvars, cmdline=cmdline,
            event_handler=handler, quiet=True, timeout=timeout, cancel_callback=canceled,
        )
    finally:
        received = restore()
    if received is not None:  # the playbook was canceled; now the signal does what it did before
        if playbook == "sweep.yml":  # ... once the runs on the devices are stopped too (stop means stop)
            _stop_sweep(inventory=inv, extra_vars=extra_vars, artifacts_dir=private)
        signal.raise_signal(received)
    return PlaybookRun(playbook=playbook, status=runner.status, rc=int(runner.rc),
                       hosts=_host_stats(runner.stats), events=tuple(events),
                       artifacts=Path(runner.config.artifact_dir))


def _stop_sweep(*, inventory: Path, extra_vars: Mapping[str, Any] | None, artifacts_dir: Path) -> PlaybookRun:
    """``playbooks/stop.yml`` after a canceled sweep (ansible-runner kills ansible-playbook with
    SIGKILL, so the playbook cannot do it itself); what it said goes to stderr."""
    print("paretopipe.orchestrate: the sweep was interrupted; stopping its runs on the devices "
          "(playbooks/stop.yml)", file=sys.stderr, flush=True)
    stopped = run_playbook("stop.yml", inventory=inventory, extra_vars=extra_vars,
                           artifacts_dir=artifacts_dir / "stop")
    for msg in stopped.messages()[-1:]:
        print(f"paretopipe.orchestrate: {msg}", file=sys.stderr, flush=True)
    return stopped


def _cancel_on_signals() -> tuple[Callable[[], bool], Callable[[], int | None]]:
    """A cancel callback for ansible-runner and a function that undoes it.

    Left to itself, ansible-runner (in the main thread) replaces the SIGINT and SIGTERM handlers
    with one that only sets a flag, and never puts them back: the caller could then no longer be
    stopped by Ctrl-C or SIGTERM. Here the first SIGINT or SIGTERM during a run cancels the
    playbook; ``restore()`` puts the previous handlers back and returns the signal that came (or
    None), for the caller to raise again once the run is over."""
    if threading.current_thread() is not threading.main_thread():
        return (lambda: False), (lambda: None)  # signal handlers belong to the main thread
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in previous:
        signal.signal(sig, record)

    def restore() -> int | None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        return received[0] if received else None

    return (lambda: bool(received)), restore


def sweep(*, inventory: str | os.PathLike[str], on_event: Callable[[Event], None] | None = None,
          artifacts_dir: str | os.PathLike[str] | None = None, timeout: int | None = None,
          **extra_vars: Any) -> PlaybookRun:
    """Run ``playbooks/sweep.yml``: every split, condition and backend the variables ask for
    (``model``, ``splits``, ``conditions``, ``backends``, ``chain``, ``windows``, ``batch_sizes``,
    ``sweep_budget``, ...; see docs/ansible.md), against ``inventory``. SIGINT or SIGTERM during it
    cancels the playbook, runs ``playbooks/stop.yml`` (the runs on the devices stop too) and is then
    raised again."""
    return run_playbook("sweep.yml", inventory=inventory, extra_vars=extra_vars,
                        on_event=on_event, artifacts_dir=artifacts_dir, timeout=timeout)
