"""CPU and memory limits per emulated device: cgroup v1 (this project's machines) or v2.

One cgroup per device, ``<parent>/<device>``, in each controller that matters:

- v1: ``cpu`` (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), ``cpuset`` (``cpuset.cpus``,
  ``cpuset.mems``) and ``memory`` (``memory.limit_in_bytes``), each its own hierarchy;
- v2: one directory with ``cpu.max``, ``cpuset.cpus``/``cpuset.mems`` and ``memory.max``,
  after enabling ``+cpu +cpuset +memory`` in the parents' ``cgroup.subtree_control``.

A process joins by writing its pid to each ``cgroup.procs``; its children inherit the group,
which is how everything started over the device's sshd ends up limited.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import TestbedError

CFS_PERIOD_US = 100_000
V1_CONTROLLERS = ("cpu", "cpuset", "memory")


def detect(root: str | Path = "/sys/fs/cgroup") -> str | None:
    """``"v2"`` when ``root`` is a unified hierarchy, ``"v1"`` when it holds the v1 cpu,
    cpuset and memory hierarchies, else None."""
    base = Path(root)
    if (base / "cgroup.controllers").exists():
        return "v2"
    if all((base / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return "v1"
    return None


def parse_cpulist(text: str) -> list[int]:
    """``"0-2,4"`` -> ``[0, 1, 2, 4]``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpulist(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(set(cpus)))


@dataclass(frozen=True)
class Limits:
    """What one device's cgroup imposes."""

    cpus: str  # cpuset list, e.g. "0" or "0,1"
    mems: str
    cpu_quota: float | None  # cores
    memory_bytes: int | None


class Cgroups:
    """The testbed's cgroups under ``parent`` (a name, e.g. ``paretopipe-pp``)."""

    def __init__(self, parent: str, *, root: str | Path = "/sys/fs/cgroup",
                 version: str | None = None) -> None:
        self.root = Path(root)
        self.parent = parent
        self.version = version or detect(self.root)
        if self.version not in ("v1", "v2"):
            raise TestbedError(
                f"no usable cgroup hierarchy under {self.root} (need v1 cpu/cpuset/memory "
                "or a v2 unified hierarchy); CPU and memory limits cannot be applied"
            )

    # -- paths -------------------------------------------------------------------------------

    def parent_dirs(self) -> list[Path]:
        if self.version == "v1":
            return [self.root / c / self.parent for c in V1_CONTROLLERS]
        return [self.root / self.parent]

    def dirs(self, device: str) -> list[Path]:
        return [p / device for p in self.parent_dirs()]

    def host_cpus(self) -> list[int]:
        base = self.root / "cpuset" if self.version == "v1" else self.root
        name = "cpuset.cpus" if self.version == "v1" else "cpuset.cpus.effective"
        try:
            return parse_cpulist((base / name).read_text())
        except OSError:
            return list(range(os.cpu_count() or 1))

    def host_mems(self) -> str:
        base = self.root / "cpuset" if self.version == "v1" else self.root
        name = "cpuset.mems" if self.version == "v1" else "cpuset.mems.effective"
        try:
            return (base / name).read_text().strip() or "0"
        except OSError:
            return "0"

    # -- create / remove -----------------------------------------------------------------------

    def create(self, device: str, limits: Limits) -> list[str]:
        """Create (or update) the device's cgroups; returns the directories it made."""
        made: list[str] = []
        for d in self.parent_dirs():
            if not d.exists():
                d.mkdir()
                made.append(str(d))
        if self.version == "v1":
            cpuset_parent = self.root / "cpuset" / self.parent
            _write(cpuset_parent / "cpuset.cpus", format_cpulist(self.host_cpus()))
            _write(cpuset_parent / "cpuset.mems", self.host_mems())
        else:
            for d in (self.root, self.root / self.parent):
                _enable_v2_controllers(d)
        for d in self.dirs(device):
            if not d.exists():
                d.mkdir()
                made.append(str(d))
        self._apply(device, limits)
        return made

    def _apply(self, device: str, lim: Limits) -> None:
        if self.version == "v1":
            cpu, cpuset, mem = (self.root / c / self.parent / device for c in V1_CONTROLLERS)
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            quota = -1 if lim.cpu_quota is None else int(lim.cpu_quota * CFS_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", str(quota))
            _write(cpuset / "cpuset.cpus", lim.cpus)
            _write(cpuset / "cpuset.mems", lim.mems)
            _write(mem / "memory.limit_in_bytes",
                   "-1" if lim.memory_bytes is None else str(lim.memory_bytes))
        else:
            d = self.root / self.parent / device
            quota = "max" if lim.cpu_quota is None else str(int(lim.cpu_quota * CFS_PERIOD_US))
            _write(d / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            _write(d / "cpuset.cpus", lim.cpus)
            _write(d / "cpuset.mems", lim.mems)
            _write(d / "memory.max", "max" if lim.memory_bytes is None else str(lim.memory_bytes))

    def read_limits(self, device: str) -> dict:
        """The limits as the kernel holds them now (for ``testbed status``)."""
        out: dict = {}
        try:
            if self.version == "v1":
                cpu, cpuset, mem = (self.root / c / self.parent / device for c in V1_CONTROLLERS)
                quota = int((cpu / "cpu.cfs_quota_us").read_text())
                period = int((cpu / "cpu.cfs_period_us").read_text())
                out["cpu_quota"] = None if quota < 0 else round(quota / period, 3)
                out["cpus"] = (cpuset / "cpuset.cpus").read_text().strip()
                limit = int((mem / "memory.limit_in_bytes").read_text())
                out["memory_bytes"] = None if limit >= 1 << 62 else limit
            else:
                d = self.root / self.parent / device
                quota, period = (d / "cpu.max").read_text().split()
                out["cpu_quota"] = None if quota == "max" else round(int(quota) / int(period), 3)
                out["cpus"] = (d / "cpuset.cpus").read_text().strip()
                limit = (d / "memory.max").read_text().strip()
                out["memory_bytes"] = None if limit == "max" else int(limit)
        except (OSError, ValueError):
            return {}
        return out

    def procs_files(self, device: str) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs(device)]

    def pids(self, device: str) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files(device):
            try:
                found.update(int(x) for x in f.read_text().split())
            except OSError:
                continue
        return found

    def exists(self, device: str) -> bool:
        return any(d.exists() for d in self.dirs(device))

    def existing_dirs(self) -> list[str]:
        """Every directory of ours that exists now, children first."""
        out = []
        for p in self.parent_dirs():
            if p.exists():
                out += [str(c) for c in sorted(p.iterdir()) if c.is_dir()]
                out.append(str(p))
        return out


def remove_dir(path: str | Path) -> None:
    """rmdir a cgroup (it must hold no processes); absent is fine."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TestbedError(f"cannot remove cgroup {path}: {exc.strerror}") from exc


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise TestbedError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def _enable_v2_controllers(directory: Path) -> None:
    available = set((directory / "cgroup.controllers").read_text().split())
    wanted = {"cpu", "cpuset", "memory"}
    if not wanted <= available:
        raise TestbedError(
            f"cgroup v2 at {directory} lacks controllers {sorted(wanted - available)}; "
            "CPU and memory limits cannot be applied"
        )
    enabled = set((directory / "cgroup.subtree_control").read_text().split())
    for ctl in sorted(wanted - enabled):
        _write(directory / "cgroup.subtree_control", f"+{ctl}")


def allocate_cpus(requests: list[tuple[str, int | None, str | None]], host: list[int]
                  ) -> dict[str, list[int]]:
    """Cores for each device: explicit cpusets as given, counts round-robin over ``host``.

    ``requests`` is ``(device, count or None for all, explicit cpuset or None)`` in topology
    order. A count larger than the host has is capped at the host's cores.
    """
    if not host:
        raise TestbedError("the host has no usable CPUs in its cpuset")
    out: dict[str, list[int]] = {}
    nxt = 0
    for device, count, explicit in requests:
        if explicit is not None:
            cores = parse_cpulist(explicit)
            bad = [c for c in cores if c not in host]
            if bad:
                raise TestbedError(
                    f"device {device}: cpuset {explicit} names cores {bad} this host lacks "
                    f"(host cores: {format_cpulist(host)})"
                )
            out[device] = cores
        elif count is None or count >= len(host):
            out[device] = list(host)
        else:
            out[device] = sorted(host[(nxt + i) % len(host)] for i in range(count))
            nxt = (nxt + count) % len(host)
    return out
