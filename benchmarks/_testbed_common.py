"""Helpers shared by the benchmarks that bring up a private emulated testbed, and by the tests
that do (they import it as ``benchmarks._testbed_common``): the topology text with names and a
subnet of their own, a tag no other testbed on this machine uses, processes started inside a
device's namespace and cgroups, and stopping them by PID.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
NICE = -10
CPU_SHARES = 32768  # 32x the default weight

#: (name, group, profile, last octet of its address) of each device of a topology
Device = tuple[str, str, str, int]


def two_pis(profile: str = "rpi4") -> list[Device]:
    """The two edge devices most benchmarks use: pi1 (.11) and pi2 (.12)."""
    return [("pi1", "edge", profile, 11), ("pi2", "edge", profile, 12)]


GPU_SERVER: Device = ("gpu", "servers", "gpu-server", 21)


def topology_text(prefix: str, net: str, devices: Sequence[Device]) -> str:
    """A testbed topology: interfaces named ``<prefix>-...``, the bridge ``br-<prefix>``, the
    subnet ``<net>.0/24`` with the controller at ``<net>.1`` and each device at ``<net>.<octet>``."""
    lines = [f"prefix: {prefix}-", f"bridge: br-{prefix}", f"subnet: {net}.0/24", f"controller_ip: {net}.1",
             "nic: eth0", "mtu: 1500", "devices:"]
    lines += [f"  - {{name: {name}, group: {group}, profile: {profile}, ip: {net}.{octet}}}"
              for name, group, profile, octet in devices]
    return "\n".join(lines) + "\n"


def free_index(letters: str, start: int, count: int) -> int:
    """An index in ``start .. start + count - 1``, beginning at this process's id, whose tag
    ``<letters><index as 2 hex digits>`` names no bridge and no namespace on this machine yet, so
    that concurrent sessions (and other testbeds) never meet."""
    base = os.getpid() % count
    for step in range(count):
        idx = start + (base + step) % count
        tag = f"{letters}{idx:02x}"
        if not Path(f"/sys/class/net/br-{tag}").exists() and not any(Path("/run/netns").glob(f"{tag}-*")):
            return idx
    return start + base


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process we started, by its PID (SIGTERM, then SIGKILL); None or an ended one: nothing."""
    from paretopipe.runtime.sweep import stop_process

    if proc is not None:
        stop_process(proc)


def raise_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, so that ``finally`` tears the testbed down
    (a background job ignores SIGINT by default)."""

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)


class Devices:
    """Start processes inside a device's namespace and cgroups (what sshd gives an Ansible task)."""

    def __init__(self, topo_path: Path) -> None:
        from paretopipe.testbed import load_topology
        from paretopipe.testbed._lifecycle import cgroup_parent
        from paretopipe.testbed.cgroups import Cgroups

        self.topo = load_topology(topo_path)
        self.cg = Cgroups(cgroup_parent(self.topo))

    def raise_cpu_weight(self) -> None:
        """Give the devices' parent cgroup a high CFS weight (cgroup v1 ``cpu.shares``).

        Nice values only order tasks within one cgroup: the testbed's group competes with every
        task of the root group at the default weight (1024 each), so on this shared host a busy
        neighbour took two thirds of a device's core. A real device has its cores to itself; the
        quota still caps each device at its profile's share."""
        if self.cg.version != "v1":
            return
        shares = Path(self.cg.root) / "cpu" / self.cg.parent / "cpu.shares"
        shares.write_text(str(CPU_SHARES))

    def argv(self, device: str, cmd: list[str]) -> list[str]:
        # Raised priority (nice -10): this host is shared (other jobs, tests), and an emulated
        # device should get its CPU slice as a real one would, not what is left over.
        # Join the cgroups first, then enter the namespace (`ip netns exec` remounts /sys, where
        # the cgroup hierarchy is not mounted), as the testbed starts each device's sshd.
        join = "; ".join(f"echo $$ > {shlex.quote(str(f))}" for f in self.cg.procs_files(device))
        return ["sh", "-c", f"set -e; {join}; exec \"$@\"", "sh", "ip", "netns", "exec", self.topo.netns(device),
                "nice", "-n", str(NICE), *cmd]

    def popen(self, device: str, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``device``, its output appended to ``log``."""
        fh = open(log, "ab")
        try:
            return subprocess.Popen(self.argv(device, cmd), stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=REPO)
        finally:
            fh.close()

    def run(self, device: str, cmd: list[str], log: Path, timeout: float) -> int:
        """Run ``cmd`` in ``device`` to its end (stopped by PID after ``timeout`` s); its exit status."""
        proc = self.popen(device, cmd, log)
        try:
            return proc.wait(timeout=timeout)
        finally:
            stop(proc)


def private_sweep_folder(keep: str | None, prefix: str, topology: str) -> tuple[Path, Path, Path, Path]:
    """A work folder for a playbook-level benchmark on a private testbed: ``keep`` (made if
    missing) or a fresh temporary one, with ``topology`` written to ``topology.yml``, a state
    folder and an inventory that takes the emulated inventory's group_vars. Returns
    (root, topology file, state folder, inventory folder)."""
    import tempfile

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    topo, state, inventory = root / "topology.yml", root / "state", root / "inventory"
    topo.write_text(topology)
    inventory.mkdir(exist_ok=True)
    if not (inventory / "group_vars").exists():
        (inventory / "group_vars").symlink_to(REPO / "inventory" / "emulated" / "group_vars")
    return root, topo, state, inventory
