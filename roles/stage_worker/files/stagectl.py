#!/usr/bin/env python3
"""Start and stop a long-lived stage worker on a device, by PID.

``start NAME --rundir DIR [--max-restarts N] [--env-json '{"K": "V"}'] -- COMMAND...`` starts a small
supervisor in its own session (so it outlives the SSH connection that started it) and returns at
once, printing ``{"pid": ..., "changed": true}``. The supervisor runs COMMAND and restarts it
when it dies abnormally, at most N times: a worker that crashes or is killed in the middle of a
sweep fails the run in progress only, and the next run finds a fresh worker. If NAME is already
running, ``start`` changes nothing (``"changed": false``).

``stop NAME --rundir DIR`` sends SIGTERM to the supervisor's process group (supervisor and
worker), waits, then SIGKILLs what is left. It only signals the PID in ``NAME.pid`` if that
process is still the supervisor it started (checked by its start time), never by name.

Files in DIR: ``NAME.pid`` (supervisor PID and start time), ``NAME.child.pid`` (the worker's PID
now), ``NAME.log`` (supervisor and worker output).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# stagectl runs with the device's paretopipe environment (stage_worker_python), which python_env
# provisioned before any worker starts, so it uses the package's helpers rather than copies.
from paretoio.files import write_atomic
from paretopipe.polling import poll_until


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    now = _start_time(pid)
    if now is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and (start is None or now == start)


def _read_pidfile(path: Path) -> tuple[int, str | None] | None:
    try:
        pid_text, _, start = path.read_text().strip().partition(" ")
        return int(pid_text), (start or None)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------ supervisor
def supervise(name: str, rundir: Path, max_restarts: int, command: list[str]) -> int:
    stopping = False
    child: subprocess.Popen | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    restarts = 0
    child_pidfile = rundir / f"{name}.child.pid"
    while True:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        write_atomic(child_pidfile, f"{child.pid} {_start_time(child.pid) or ''}\n")
        rc = child.wait()
        child_pidfile.unlink(missing_ok=True)
        if stopping:
            print(f"stagectl: {name} stopped (worker exit status {rc})", flush=True)
            return 0
        if restarts >= max_restarts:
            print(f"stagectl: {name} exited with status {rc}; restarted {restarts} time(s) already, giving up",
                  flush=True)
            return 1
        restarts += 1
        print(f"stagectl: {name} exited with status {rc}; restarting ({restarts}/{max_restarts})", flush=True)
        time.sleep(0.2)


# ------------------------------------------------------------------------ start / stop
def start(name: str, rundir: Path, max_restarts: int, env: dict[str, str], command: list[str]) -> dict:
    rundir.mkdir(parents=True, exist_ok=True)
    pidfile = rundir / f"{name}.pid"
    old = _read_pidfile(pidfile)
    if old and _alive(*old):
        return {"name": name, "pid": old[0], "changed": False, "log": str(rundir / f"{name}.log")}
    child_env = {**os.environ, **{str(k): str(v) for k, v in env.items()}}
    log = open(rundir / f"{name}.log", "ab")  # noqa: SIM115 (handed to the supervisor)
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "supervise", name, "--rundir", str(rundir),
         "--max-restarts", str(max_restarts), "--", *command],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env,
        start_new_session=True, close_fds=True)
    log.close()
    write_atomic(pidfile, f"{proc.pid} {_start_time(proc.pid) or ''}\n")
    time.sleep(0.05)
    if proc.poll() is not None:
        raise SystemExit(f"stagectl: {name} exited at once (status {proc.returncode}); see {rundir / (name + '.log')}")
    return {"name": name, "pid": proc.pid, "changed": True, "log": str(rundir / f"{name}.log")}


def stop(name: str, rundir: Path, timeout: float) -> dict:
    pidfile = rundir / f"{name}.pid"
    rec = _read_pidfile(pidfile)
    result = {"name": name, "pid": rec[0] if rec else None, "changed": False, "killed": False}
    if rec and _alive(*rec):
        pid = rec[0]
        try:
            os.killpg(pid, signal.SIGTERM)  # the supervisor leads its own session and group
        except ProcessLookupError:
            pass
        poll_until(lambda: not _alive(*rec), timeout)
        # The worker may outlive the supervisor for a moment; the group takes both.
        try:
            os.killpg(pid, signal.SIGKILL)
            result["killed"] = _alive(*rec)
        except ProcessLookupError:
            pass
        result["changed"] = True
    child = _read_pidfile(rundir / f"{name}.child.pid")
    if child and _alive(*child):  # orphaned worker (supervisor killed with SIGKILL from outside)
        os.kill(child[0], signal.SIGKILL)
        result["changed"] = True
        result["killed"] = True
    for leftover in (pidfile, rundir / f"{name}.child.pid"):
        leftover.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stagectl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("start", "stop", "supervise"):
        p = sub.add_parser(action)
        p.add_argument("name")
        p.add_argument("--rundir", required=True, type=Path)
        if action in ("start", "supervise"):
            p.add_argument("--max-restarts", type=int, default=3)
            p.add_argument("command", nargs="+")
        if action == "start":
            p.add_argument("--env-json", type=json.loads, default={}, metavar="JSON",
                           help="extra environment for the worker, as a JSON object")
        if action == "stop":
            p.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.action == "supervise":
        return supervise(args.name, args.rundir, args.max_restarts, args.command)
    if args.action == "start":
        print(json.dumps(start(args.name, args.rundir, args.max_restarts, args.env_json, args.command)))
    else:
        print(json.dumps(stop(args.name, args.rundir, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
