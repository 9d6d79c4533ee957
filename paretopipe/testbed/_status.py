"""What exists of the testbed now, for either kind of device (namespaces or virtual machines).

Above :mod:`~paretopipe.testbed._lifecycle`, so that the modules that make a testbed
(it and :mod:`~paretopipe.testbed.vm._machines`) need not import each other to answer
``paretopipe testbed status``. Both kinds report the same keys where they mean the same thing
(a VM's QEMU process stands where a namespace's sshd does), for one printing path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from paretopipe.netcond.measure import configured_from_qdiscs, parse_tc_qdisc
from paretopipe.testbed import _ssh, _system
from paretopipe.testbed._lifecycle import _cgroups, leftovers
from paretopipe.testbed._state import Paths, State
from paretopipe.testbed.topology import Device, Topology, load_topology

__all__ = ["status"]


def status(*, state_dir: str | Path | None = None) -> dict:
    """What exists now: devices (namespace or VM, sshd, port 22, cgroup limits), shaping,
    leftovers."""
    paths = Paths.at(state_dir)
    state = State.load(paths)
    if state is None:
        out: dict = {"up": False, "state_dir": str(paths.root), "devices": {}, "shaping": None}
        if os.geteuid() == 0:
            out["leftovers"] = [lo.describe() for lo in leftovers(load_topology())]
        return out
    topo = Topology.from_dict(state.topology)
    if state.device_kind == "vm":
        return _vm_status(topo, state, paths)
    spaces = _system.netns_list()
    cg = _cgroups(topo, state.cgroup_version)
    devices = {}
    for dev in topo.devices:
        sshd, alive, port = _process(state, "sshd", dev)
        shaped = None
        if state.shaping and dev.name in state.shaping.get("devices", {}) \
                and topo.netns(dev.name) in spaces:
            qd = parse_tc_qdisc(
                _system.run(["tc", "-s", "qdisc", "show"], ns=topo.netns(dev.name)).stdout)
            shaped = {"kernel": configured_from_qdiscs(qd),
                      "qdisc_drops": sum(q.get("dropped", 0) for q in qd)}
        devices[dev.name] = {
            "shaped": shaped,
            "group": dev.group,
            "ip": dev.ip,
            "netns": topo.netns(dev.name),
            "netns_exists": topo.netns(dev.name) in spaces,
            "profile": dev.profile,
            "limits": cg.read_limits(dev.name),
            "sshd_pid": sshd["pid"] if sshd else None,
            "sshd_alive": alive,
            "ssh_port_open": port,
            "workdir": str(paths.workdir(dev.name)),
        }
    healthy = all(d["netns_exists"] and d["sshd_alive"] and d["ssh_port_open"]
                  for d in devices.values())
    return _summary(topo, state, paths, devices, healthy=healthy, shaping=state.shaping)


def _vm_status(topo: Topology, state: State, paths: Paths) -> dict:
    """A VM testbed: per device the QEMU process, whether ssh answers, limits."""
    cg = _cgroups(topo, state.cgroup_version)
    devices = {}
    for dev in topo.devices:
        rec, alive, port = _process(state, "qemu", dev)
        devices[dev.name] = {
            "group": dev.group, "ip": dev.ip, "profile": dev.profile, "shaped": None,
            "limits": cg.read_limits(dev.name), "vm_pid": rec["pid"] if rec else None,
            "vm_alive": alive, "ssh_port_open": port,
            # The names the namespace testbed's status uses, for one printing path.
            "sshd_pid": rec["pid"] if rec else None, "sshd_alive": alive,
            "console": str(paths.rundir(dev.name) / "console.log"),
        }
    healthy = all(d["vm_alive"] and d["ssh_port_open"] for d in devices.values())
    return {"kind": "vm", **_summary(topo, state, paths, devices, healthy=healthy, shaping=None)}


def _process(state: State, role: str, dev: Device) -> tuple[dict[str, Any] | None, bool, bool]:
    """The device's recorded process of ``role`` (or None), whether it lives, whether port 22
    answers."""
    rec = next(iter(state.find("process", role=role, device=dev.name)), None)
    alive = bool(rec) and _system.pid_alive(rec["pid"], rec.get("start"))
    return rec, alive, alive and _ssh.port_open(dev.ip)


def _summary(topo: Topology, state: State, paths: Paths, devices: dict, *, healthy: bool,
             shaping: dict | None) -> dict:
    return {
        "up": True,
        "healthy": healthy,
        "state_dir": str(paths.root),
        "inventory": state.inventory,
        "bridge": topo.bridge,
        "subnet": topo.subnet,
        "controller_ip": topo.controller_ip,
        "cgroup_version": state.cgroup_version,
        "devices": devices,
        "shaping": shaping,
        "resources": len(state.resources),
    }
