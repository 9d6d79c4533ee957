"""Thin wrappers over the system: commands, namespaces, links and processes (by PID only)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from paretopipe.errors import TestbedError
from paretopipe.polling import poll_until

TOOLS = ("ip", "tc", "iptables", "ssh", "ssh-keygen", "ping", "chrt", "nice")
SSHD = "/usr/sbin/sshd"


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError(
            "the emulated testbed needs root (network namespaces, tc, iptables, cgroups); "
            "run it as root, e.g. `sudo .venv/bin/paretopipe testbed up`"
        )


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        raise TestbedError(
            f"missing tools: {', '.join(missing)}; run scripts/setup.sh (installs iproute2, "
            "iptables, openssh-server/client, iputils-ping)"
        )


def run(argv: Sequence[str], *, ns: str | None = None, check: bool = True,
        timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a command (inside netns ``ns`` if given); a failure with ``check`` raises TestbedError."""
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"`{' '.join(cmd)}` timed out after {timeout:g} s") from exc
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise TestbedError(f"`{' '.join(cmd)}` failed: {msg[-1] if msg else proc.returncode}")
    return proc


def netns_list() -> set[str]:
    out = run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str, ns: str | None = None) -> bool:
    return run(["ip", "link", "show", "dev", name], ns=ns, check=False).returncode == 0


def links(ns: str | None = None) -> set[str]:
    out = run(["ip", "-o", "link", "show"], ns=ns).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@")[0])
    return names


def _ns_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in_netns(ns: str) -> list[int]:
    """Live processes whose network namespace is ``ns`` (found by listing /proc)."""
    key = _ns_key(f"/run/netns/{ns}")
    if key is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_key(f"/proc/{entry}/ns/net") == key and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start: int | None = None) -> bool:
    """True if ``pid`` runs (zombies count as gone) and, if given, started at ``start``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def terminate(pids: Sequence[tuple[int, int | None]], timeout: float = 5.0) -> list[int]:
    """SIGTERM each (pid, start_time), SIGKILL what is left after ``timeout``; returns the
    pids that were still alive and got a signal. Pids that were reused are left alone."""
    live = [(p, s) for p, s in pids if pid_alive(p, s)]
    for pid, _ in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    def all_gone() -> bool:
        return not any(pid_alive(p, s) for p, s in live)

    poll_until(all_gone, timeout)
    for pid, start in live:
        if pid_alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    poll_until(all_gone, 2.0)
    still = [p for p, s in live if pid_alive(p, s)]
    if still:
        raise TestbedError(f"processes {still} survived SIGKILL")
    return [p for p, _ in live]


def wait_for_file(path: Path, timeout: float) -> bool:
    """Whether ``path`` exists and is not empty within ``timeout`` seconds."""
    return poll_until(lambda: path.exists() and path.stat().st_size > 0, timeout, interval_s=0.02)
