"""Who owns which cores: default intra-op threads for stages that share a host or not.

Stages on separate devices each use their device's cores. Stages that share a host (a worker on
loopback, the local ``paretopipe sweep``, emulated devices on one kernel) divide its cores: two
processes that each start as many threads as there are cores fight each other, and OpenMP
threads that spin while they wait burn the cores the other stage needs.

- :func:`usable_cpus`: the cores this process may really use: its CPU affinity, capped by its
  cgroup's CPU quota (v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` or v2 ``cpu.max``).
- :func:`threads_for`: the default thread count when ``sharing`` stages share those cores.
- :func:`is_local_address`: whether a stage address is on this host (loopback, or one of this
  host's interface addresses), i.e. whether that stage shares our cores.
- :func:`quiet_waiting`: OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``)
  unless the user set a policy. Must run before torch is imported: OpenMP reads it once.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from pathlib import Path

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def quiet_waiting() -> None:
    """Make idle OpenMP threads sleep instead of spinning, unless the user chose a policy.

    Measured on this project's 2-core machine (ResNet18, 64 px, batch 4, two threads, another
    process busy): 135-189 ms per forward pass with spinning threads, 32-61 ms with passive
    ones. A dedicated device loses little: the threads still wake within microseconds."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """This process's CPU quota in cores, or None when it has none (or it cannot be read)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        try:
            if controllers == "":  # v2: one unified hierarchy
                quota, period = (root / rel / "cpu.max").read_text(encoding="utf-8").split()
                if quota != "max":
                    return int(quota) / int(period)
            elif "cpu" in controllers.split(","):
                base = root / next(c for c in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / c).is_dir())
                quota_us = int((base / rel / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
                period_us = int((base / rel / "cpu.cfs_period_us").read_text(encoding="utf-8"))
                if quota_us > 0 and period_us > 0:
                    return quota_us / period_us
        except (OSError, ValueError, StopIteration):
            continue
    return None


def usable_cpus() -> int:
    """Whole cores this process can use: its affinity, capped by its cgroup quota (rounded up,
    so half a core is one thread), at least 1."""
    count = _affinity_count()
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota - 1e-9)))
    return max(1, count)


def threads_for(sharing: int, cpus: int | None = None) -> int:
    """Default intra-op threads for each of `sharing` stages on one host with `cpus` cores."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, sharing))


def _local_ips() -> set[str]:
    ips = {"127.0.0.1", "::1"}
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            ips.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    except (ImportError, OSError):
        pass
    return ips


def is_local_address(address: str) -> bool:
    """Whether HOST[:PORT] names this host: a loopback address, or one of its interfaces."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    local = _local_ips()
    for info in infos:
        ip = str(info[4][0]).split("%")[0]
        try:
            if ipaddress.ip_address(ip).is_loopback or ip in local:
                return True
        except ValueError:
            continue
    return False


def boot_id() -> str | None:
    """The running kernel's boot id: equal for every process on one kernel (namespaces
    included), different across machines and virtual machines."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
