"""What exists of the testbed now, for either kind of device (namespaces or virtual machines).

Above both :mod:`~paretopipe.testbed._lifecycle` and :mod:`~paretopipe.testbed.vm._machines`,
so that neither has to import the other to answer ``paretopipe testbed status``.
"""

from __future__ import annotations

import os
from pathlib import Path

from paretopipe.netcond.measure import configured_from_qdiscs, parse_tc_qdisc
from paretopipe.testbed import _ssh, _system
from paretopipe.testbed._lifecycle import _cgroups, leftovers
from paretopipe.testbed._state import Paths, State
from paretopipe.testbed.topology import Topology, load_topology
from paretopipe.testbed.vm._machines import status as vm_status


def status(*, state_dir: str | Path | None = None) -> dict:
    """What exists now: devices (namespace, sshd, port 22, cgroup limits), shaping, leftovers."""
    paths = Paths.at(state_dir)
    state = State.load(paths)
    if state is None:
        out: dict = {"up": False, "state_dir": str(paths.root), "devices": {}, "shaping": None}
        if os.geteuid() == 0:
            out["leftovers"] = [lo.describe() for lo in leftovers(load_topology())]
        return out
    topo = Topology.from_dict(state.topology)
    if state.device_kind == "vm":
        return vm_status(topo, state, paths)
    spaces = _system.netns_list()
    cg = _cgroups(topo, state.cgroup_version)
    devices = {}
    for dev in topo.devices:
        sshd = next(iter(state.find("process", role="sshd", device=dev.name)), None)
        alive = bool(sshd) and _system.pid_alive(sshd["pid"], sshd.get("start"))
        port = alive and _ssh.port_open(dev.ip)
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
        "shaping": state.shaping,
        "resources": len(state.resources),
    }
