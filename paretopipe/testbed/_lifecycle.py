"""Bring the emulated testbed up, tear it down, report what exists.

Every resource ``up`` makes is appended to the state file *as it is made* (so a crash still
leaves a record), and ``down`` undoes them in reverse order, then lists namespaces, links,
cgroups and processes by name to prove nothing of ours is left.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import TestbedError
from paretoio.files import write_atomic
from paretopipe.testbed import _ssh, _system
from paretopipe.testbed._shaping import unshape_locked
from paretopipe.testbed._state import (
    Paths,
    Progress,
    State,
    default_inventory_path,
    device_python,
    locked,
    quiet,
)
from paretopipe.testbed.cgroups import (
    Cgroups,
    Limits,
    allocate_cpus,
    format_cpulist,
    parse_cpulist,
    remove_dir,
)
from paretopipe.testbed.topology import Topology, load_topology

SSHD_PRIVSEP_DIR = Path("/run/sshd")
_FOREIGN_HINT = (" (left by a testbed that crashed? `paretopipe testbed down [--topology FILE]` "
                 "removes what exists under the topology's names)")


def _topology(topology: Topology | str | Path | None) -> Topology:
    return topology if isinstance(topology, Topology) else load_topology(topology)


def cgroup_parent(topo: Topology) -> str:
    return f"paretopipe-{topo.prefix.rstrip('-')}"


def _cgroups(topo: Topology, version: str | None = None) -> Cgroups:
    return Cgroups(cgroup_parent(topo), version=version)


# --- up ----------------------------------------------------------------------------------------


class _Builder:
    """One ``up`` run: records what it makes, in the state and in ``made`` (for rollback)."""

    def __init__(self, topo: Topology, paths: Paths, state: State, progress: Progress,
                 fail_hook: Callable[[str], None] | None) -> None:
        self.topo, self.paths, self.state, self.progress = topo, paths, state, progress
        self.made: list[dict] = []
        self.actions: list[str] = []
        self.fail_hook = fail_hook

    def step(self, name: str) -> None:
        if self.fail_hook is not None:
            self.fail_hook(name)

    def record(self, resource: dict, action: str) -> None:
        self.state.resources.append(resource)
        self.made.append(resource)
        self.state.save(self.paths)
        self.actions.append(action)
        self.progress(action)

    def build(self) -> None:
        topo, paths = self.topo, self.paths
        for action in _ssh.ensure_keys(paths, topo.names):
            self.actions.append(action)
            self.progress(action)
        if not SSHD_PRIVSEP_DIR.is_dir():
            # System setup, not a testbed resource: openssh-server's own directory, which
            # any sshd on this machine (another testbed's too) needs; `down` leaves it.
            SSHD_PRIVSEP_DIR.mkdir(mode=0o755)
            self.actions.append(f"created {SSHD_PRIVSEP_DIR} (sshd's privilege separation "
                                "directory; kept)")
        self.step("bridge")
        self._bridge()
        cg = _cgroups(topo, self.state.cgroup_version)
        self.state.cgroup_version = cg.version
        cpus = allocate_cpus([(d.name, topo.profile(d.profile).cpus, d.cpuset)
                              for d in topo.devices], cg.host_cpus())
        for dev in topo.devices:
            self.step(f"device:{dev.name}")
            self._device(dev.name, dev.ip)
            self._cgroup(cg, dev.name, dev.profile, cpus[dev.name])
            paths.workdir(dev.name).mkdir(parents=True, exist_ok=True)
        _ssh.write_known_hosts(paths, {d.name: d.ip for d in topo.devices})
        for dev in topo.devices:
            self.step(f"sshd:{dev.name}")
            self._sshd(cg, dev.name, dev.ip)
        for dev in topo.devices:
            probe = _system.run(_ssh.ssh_argv(paths, dev.ip, "true"), check=False, timeout=20)
            if probe.returncode != 0:
                raise TestbedError(f"ssh to {dev.name} ({dev.ip}) fails: {probe.stderr.strip()}")
        self.step("inventory")
        self._inventory(cg, cpus)

    def _bridge(self) -> None:
        topo = self.topo
        if self.state.has("link", name=topo.bridge) and _system.link_exists(topo.bridge):
            return
        if _system.link_exists(topo.bridge):
            raise TestbedError(f"a link named {topo.bridge} exists and is not this testbed's; "
                               "pick another `bridge:` in the topology" + _FOREIGN_HINT)
        _system.run(["ip", "link", "add", topo.bridge, "type", "bridge"])
        self.record({"kind": "link", "name": topo.bridge}, f"created bridge {topo.bridge}")
        _system.run(["ip", "link", "set", "dev", topo.bridge, "mtu", str(topo.mtu)])
        _system.run(["ip", "addr", "add", f"{topo.controller_ip}/{topo.prefix_len}",
                     "dev", topo.bridge])
        _system.run(["ip", "link", "set", "dev", topo.bridge, "up"])

    def _device(self, name: str, ip: str) -> None:
        topo = self.topo
        ns, host_if = topo.netns(name), topo.host_if(name)
        if not self.state.has("netns", name=ns):
            if ns in _system.netns_list():
                raise TestbedError(f"network namespace {ns} exists and is not this testbed's; "
                                   "pick another `prefix:`" + _FOREIGN_HINT)
            _system.run(["ip", "netns", "add", ns])
            self.record({"kind": "netns", "name": ns}, f"created namespace {ns}")
        elif ns not in _system.netns_list():
            raise TestbedError(f"namespace {ns} is recorded but gone; run `testbed down` first")
        if not _system.link_exists(host_if):
            _system.run(["ip", "link", "add", host_if, "mtu", str(topo.mtu), "type", "veth",
                         "peer", "name", topo.nic, "mtu", str(topo.mtu), "netns", ns])
            self.record({"kind": "link", "name": host_if},
                        f"created link {host_if} <-> {ns}:{topo.nic}")
            _system.run(["ip", "link", "set", "dev", host_if, "master", topo.bridge, "up"])
            _system.run(["ip", "link", "set", "dev", "lo", "up"], ns=ns)
            # IPv4 only: shaping filters IPv4, so no unshaped IPv6 path may exist.
            _system.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"], ns=ns, check=False)
            _system.run(["ip", "addr", "add", f"{ip}/{topo.prefix_len}", "dev", topo.nic], ns=ns)
            _system.run(["ip", "link", "set", "dev", topo.nic, "up"], ns=ns)
        elif not self.state.has("link", name=host_if):
            raise TestbedError(f"a link named {host_if} exists and is not this testbed's"
                               + _FOREIGN_HINT)

    def _cgroup(self, cg: Cgroups, name: str, profile: str, cpus: list[int]) -> None:
        prof = self.topo.profile(profile)
        limits = Limits(cpus=format_cpulist(cpus), mems=cg.host_mems(),
                        cpu_quota=prof.cpu_quota, memory_bytes=prof.memory_bytes)
        existed = cg.exists(name)
        now = cg.read_limits(name) if existed else {}
        if now and parse_cpulist(now["cpus"]) == sorted(cpus) and now["memory_bytes"] == \
                prof.memory_bytes and now["cpu_quota"] == (
                    None if prof.cpu_quota is None else round(prof.cpu_quota, 3)):
            return
        for path in cg.create(name, limits):
            self.record({"kind": "cgroup", "path": path}, f"created cgroup {path}")
        if existed:
            self.actions.append(f"reset limits of {name}'s cgroups")

    def _sshd(self, cg: Cgroups, name: str, ip: str) -> None:
        for rec in self.state.find("process", role="sshd", device=name):
            if _system.pid_alive(rec["pid"], rec["start"]):
                return
            self.state.resources.remove(rec)  # died: start a new one
        ns = self.topo.netns(name)
        rec = _ssh.start_sshd(self.paths, name, ip, ns, cg.procs_files(name))
        self.record(rec, f"started sshd for {name} on {ip}:22 (pid {rec['pid']})")
        _ssh.wait_for_port(ip, 22, 10.0)

    def _inventory(self, cg: Cgroups, cpus: dict[str, list[int]]) -> None:
        topo = self.topo
        device_vars = {}
        for dev in topo.devices:
            prof = topo.profile(dev.profile)
            device_vars[dev.name] = {
                "paretopipe_profile": prof.name,
                "paretopipe_threads": prof.threads or len(cpus[dev.name]),
                "paretopipe_cpus": format_cpulist(cpus[dev.name]),
                "paretopipe_cpu_quota": prof.cpu_quota,
                "paretopipe_memory_bytes": prof.memory_bytes,
            }
            if dev.replay_vars() is not None:  # the stage worker and the sweep's source replay it
                device_vars[dev.name]["paretopipe_replay"] = dev.replay_vars()
        text = _ssh.inventory(self.paths, topo.to_dict(), device_vars, device_python())
        path = Path(self.state.inventory)
        if path.exists() and path.read_text() == text:
            if not self.state.has("file", path=str(path)):
                self.record({"kind": "file", "path": str(path)}, f"adopted inventory {path}")
            return
        write_atomic(path, text)
        if not self.state.has("file", path=str(path)):
            self.record({"kind": "file", "path": str(path)}, f"wrote inventory {path}")
        else:
            self.actions.append(f"rewrote inventory {path}")


def up(topology: Topology | str | Path | None = None, *, state_dir: str | Path | None = None,
       inventory: str | Path | None = None, progress: Progress | None = None,
       _fail_at: Callable[[str], None] | None = None) -> dict:
    """Create (or complete) the testbed; a second call changes nothing and says so.

    If any step fails, everything this call made is removed again before the error is raised.
    """
    _system.require_root()
    _system.require_tools()
    topo = _topology(topology)
    paths = Paths.at(state_dir)
    progress = progress or quiet
    inv = str(Path(inventory).resolve() if inventory else default_inventory_path())
    with locked(paths):
        state = State.load(paths)
        if state is not None and state.device_kind != "netns":
            raise TestbedError(f"a testbed of virtual machines is up in {paths.root}; "
                               "run `paretopipe testbed down` first")
        if state is not None and state.topology != topo.to_dict():
            raise TestbedError(
                f"a testbed with another topology is up (state: {paths.state_file}); "
                "run `paretopipe testbed down` first"
            )
        check_inventory(state, inv)
        state = state or State(topology=topo.to_dict(), inventory=inv)
        builder = _Builder(topo, paths, state, progress, _fail_at)
        return build_or_roll_back(builder, builder.build)


def check_inventory(state: State | None, inventory: str) -> None:
    """A testbed that is up keeps writing its inventory where it did."""
    if state is not None and state.inventory != inventory:
        raise TestbedError(f"this testbed writes its inventory to {state.inventory}; "
                           "run `paretopipe testbed down` first to move it")


def build_or_roll_back(builder: _Builder, build: Callable[[], None]) -> dict:
    """Run ``build`` (which makes things through ``builder.record``); if it fails, undo what it
    made and raise (:func:`roll_back`). Returns what ``up`` reports: whether anything changed,
    the actions, the state folder, the inventory and the devices' addresses."""
    try:
        build()
    except BaseException as exc:
        roll_back(exc, builder.made, builder.state, builder.paths, builder.progress)
        raise
    return {
        "changed": bool(builder.actions),
        "actions": builder.actions,
        "state_dir": str(builder.paths.root),
        "inventory": builder.state.inventory,
        "devices": {d.name: d.ip for d in builder.topo.devices},
    }


def roll_back(exc: BaseException, made: list[dict], state: State, paths: Paths,
              progress: Progress) -> None:
    """Undo what a failed ``up`` made (newest first), then raise the error to report.

    Returns (for the caller to re-raise ``exc`` as it is) only for errors that are not ours,
    such as KeyboardInterrupt.
    """
    progress(f"up failed ({exc}); removing the {len(made)} things it made")
    errors = _undo(list(reversed(made)), state, paths, progress)
    if state.resources:
        state.save(paths)
    else:
        paths.state_file.unlink(missing_ok=True)
    if errors:
        raise TestbedError(f"testbed up failed: {exc}; cleanup also failed: "
                           f"{'; '.join(errors)}") from exc
    if isinstance(exc, (TestbedError, OSError)):
        raise TestbedError(f"testbed up failed and was rolled back: {exc}") from exc


# --- down --------------------------------------------------------------------------------------


def _undo(resources: list[dict], state: State, paths: Paths, progress: Progress) -> list[str]:
    """Undo ``resources`` in the order given; returns error messages (keeps going)."""
    errors = []
    for res in resources:
        try:
            _undo_one(res, progress)
        except (TestbedError, OSError) as exc:
            errors.append(str(exc))
            continue
        if res in state.resources:
            state.resources.remove(res)
    return errors


def _undo_one(res: dict, progress: Progress) -> None:
    kind = res["kind"]
    if kind == "process":
        killed = _system.terminate([(res["pid"], res.get("start"))])
        if killed:
            progress(f"stopped {res.get('role', 'process')} of {res.get('device', '?')} "
                     f"(pid {res['pid']})")
    elif kind == "netns":
        ns = res["name"]
        pids = _system.pids_in_netns(ns)
        if pids:
            _system.terminate([(p, _system.start_time(p)) for p in pids])
            progress(f"stopped {len(pids)} processes left in {ns}")
        if ns in _system.netns_list():
            _system.run(["ip", "netns", "del", ns])
            progress(f"removed namespace {ns}")
    elif kind == "link":
        if _system.link_exists(res["name"]):
            _system.run(["ip", "link", "del", "dev", res["name"]])
            progress(f"removed link {res['name']}")
    elif kind == "cgroup":
        procs = Path(res["path"]) / "cgroup.procs"
        if procs.exists():
            pids = [int(p) for p in procs.read_text().split()]
            if pids:
                _system.terminate([(p, _system.start_time(p)) for p in pids])
                progress(f"stopped {len(pids)} processes left in cgroup {res['path']}")
            remove_dir(res["path"])
            progress(f"removed cgroup {res['path']}")
    elif kind == "file":
        if os.path.exists(res["path"]):
            os.unlink(res["path"])
            progress(f"removed {res['path']}")
    elif kind == "dir":
        try:
            os.rmdir(res["path"])
            progress(f"removed {res['path']}")
        except FileNotFoundError:
            pass
        except OSError:
            progress(f"left {res['path']} in place (not empty: someone else uses it)")
    elif kind == "iptables":
        _system.run(res["delete"], check=False)
    else:
        raise TestbedError(f"unknown resource kind {kind!r} in the state file")


@dataclass(frozen=True)
class Leftover:
    """One thing of a topology that still exists: ``kind`` is a state-file resource kind
    (netns, link, cgroup, process), ``name`` its name, path or pid, ``owner`` what a process
    is ("sshd of pi1")."""

    kind: str
    name: str
    owner: str = ""

    def resource(self) -> dict:
        """The state-file record that undoes it (``_undo``); processes are found by pid."""
        key = "path" if self.kind == "cgroup" else "name"
        return {"kind": self.kind, key: self.name}

    def describe(self) -> str:
        """"namespace pp-pi1", "process 4242 (sshd of pi1)": how status and errors show it."""
        label = {"netns": "namespace"}.get(self.kind, self.kind)
        return f"{label} {self.name}" + (f" ({self.owner})" if self.owner else "")


def leftovers(topo: Topology, state: State | None = None) -> list[Leftover]:
    """What of this topology still exists, found by listing (not by trusting the state)."""
    found = []
    spaces = _system.netns_list()
    found += [Leftover("netns", topo.netns(n)) for n in topo.names if topo.netns(n) in spaces]
    links = _system.links()
    found += [Leftover("link", name) for name in [topo.bridge, *map(topo.host_if, topo.names)]
              if name in links]
    try:
        found += [Leftover("cgroup", p) for p in _cgroups(topo).existing_dirs()]
    except TestbedError:
        pass
    if state is not None:
        for res in state.resources:
            if res["kind"] == "process" and _system.pid_alive(res["pid"], res.get("start")):
                found.append(Leftover("process", str(res["pid"]),
                                      f"{res.get('role')} of {res.get('device')}"))
        for dl in (state.shaping or {}).get("processes", []):
            if _system.pid_alive(dl["pid"], dl.get("start")):
                found.append(Leftover("process", str(dl["pid"]), f"{dl.get('role', 'delay line')} of {dl.get('device')}"))
    return found


def down(*, state_dir: str | Path | None = None, topology: Topology | str | Path | None = None,
         progress: Progress | None = None) -> dict:
    """Remove everything the testbed made; then verify, by listing, that nothing is left.

    Without a state file, removes whatever of ``topology`` (default: the packaged one) exists.
    """
    _system.require_root()
    paths = Paths.at(state_dir)
    progress = progress or quiet
    with locked(paths):
        state = State.load(paths)
        if state is not None:
            topo = Topology.from_dict(state.topology)
        else:
            topo = _topology(topology)
            state = State(topology=topo.to_dict(), inventory="")
            # Nothing recorded: adopt what exists under this topology's names.
            spaces, links = _system.netns_list(), _system.links()
            state.resources = (
                [{"kind": "link", "name": topo.bridge}] * (topo.bridge in links)
                + [{"kind": "cgroup", "path": p} for p in _safe_cgroup_dirs(topo)][::-1]
                + [{"kind": "netns", "name": topo.netns(n)} for n in topo.names
                   if topo.netns(n) in spaces]
            )
        removed_before = len(state.resources)
        errors: list[str] = []
        if state.shaping:
            try:
                unshape_locked(topo, state, paths, progress)
            except TestbedError as exc:
                errors.append(str(exc))
        errors += _undo(list(reversed(state.resources)), state, paths, progress)
        left = leftovers(topo, state)
        if left:
            # Second pass by name: whatever the listing found, ours by its name.
            again = [lo.resource() for lo in left if lo.kind != "process"]
            errors += _undo(again, state, paths, progress)
            left = leftovers(topo, state)
        if left:
            state.save(paths)
            raise TestbedError("testbed down left these behind: "
                               + ", ".join(lo.describe() for lo in left)
                               + (f" (errors: {'; '.join(errors)})" if errors else ""))
        paths.state_file.unlink(missing_ok=True)
        for device in topo.names:
            run = paths.rundir(device)
            if run.is_dir():
                for f in run.iterdir():
                    f.unlink()
                run.rmdir()
        if (paths.root / "run").is_dir() and not any((paths.root / "run").iterdir()):
            (paths.root / "run").rmdir()
        return {"changed": removed_before > 0, "removed": removed_before,
                "state_dir": str(paths.root)}


def _safe_cgroup_dirs(topo: Topology) -> list[str]:
    try:
        return _cgroups(topo).existing_dirs()
    except TestbedError:
        return []
