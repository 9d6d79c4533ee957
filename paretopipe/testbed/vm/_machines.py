"""Bring virtual devices up: bridge, a tap per device, cgroups, overlay and seed disks, QEMU.

Every resource is recorded in the testbed's state file as it is made (kinds the namespace
testbed already undoes: link, cgroup, file, process), so ``paretopipe testbed down`` removes a
VM testbed exactly as it removes a namespace one, and a failed ``up`` rolls back what it made.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import yaml

from paretopipe.errors import ConfigError, TestbedError
from paretopipe.polling import poll_until
from paretopipe.testbed import _ssh, _system
from paretopipe.testbed._lifecycle import (
    _FOREIGN_HINT,
    _Builder,
    _cgroups,
    _topology,
    build_or_roll_back,
    check_inventory,
)
from paretopipe.testbed._state import Paths, Progress, State, checkout_root, locked, quiet
from paretopipe.testbed.cgroups import Limits, allocate_cpus, format_cpulist
from paretopipe.testbed.topology import Topology
from paretopipe.testbed.vm._image import Image, ensure_image, ext4_image

KIND = "vm"
BOOT_TIMEOUT_S = 600.0      # TCG on a loaded 2-core host: 60-120 s is usual
DEFAULT_MEMORY = 1 << 30    # a profile without a memory limit still needs a machine size
QEMU_OVERHEAD = 512 << 20   # the cgroup's memory limit is the guest's plus QEMU's own
TCG_TB_MB = 256             # translation cache per VM (QEMU's default is 1 GiB)
WHEELHOUSE_MOUNT = "/srv/wheelhouse"
DEVICE_WORKDIR = "/root/paretopipe"


def default_vm_inventory_path() -> Path:
    root = checkout_root()
    return (root if root else Path.cwd()) / "inventory" / "vm" / "hosts.yml"


def _mac(topo: Topology, name: str) -> str:
    idx = topo.names.index(name)
    octets = [int(x) for x in topo.controller_ip.split(".")]
    return "52:54:%02x:%02x:%02x:%02x" % (octets[1], octets[2], 0x70, idx + 1)


class _VmBuilder(_Builder):
    """The namespace testbed's builder's bookkeeping (record, bridge), VMs for devices."""

    def __init__(self, topo: Topology, paths: Paths, state: State, image: Image,
                 wheelhouse_img: Path | None, boot_timeout_s: float, progress: Progress) -> None:
        super().__init__(topo, paths, state, progress, None)
        self.image, self.wheelhouse_img, self.boot_timeout_s = (image, wheelhouse_img,
                                                                boot_timeout_s)
        self.boot_s: dict[str, float] = {}

    def build(self) -> None:
        topo, paths = self.topo, self.paths
        for action in _ssh.ensure_keys(paths, topo.names):
            self.actions.append(action)
        self._bridge()
        cg = _cgroups(topo, self.state.cgroup_version)
        self.state.cgroup_version = cg.version
        host_cpus = cg.host_cpus()
        cpus = allocate_cpus([(d.name, topo.profile(d.profile).cpus, d.cpuset)
                              for d in topo.devices], host_cpus)
        _ssh.write_known_hosts(paths, {d.name: d.ip for d in topo.devices})
        started: dict[str, float] = {}
        for dev in topo.devices:
            if self._running(dev.name):
                continue
            prof = topo.profile(dev.profile)
            memory = prof.memory_bytes or DEFAULT_MEMORY
            limits = Limits(cpus=format_cpulist(cpus[dev.name]), mems=cg.host_mems(),
                            cpu_quota=prof.cpu_quota, memory_bytes=memory + QEMU_OVERHEAD)
            for path in cg.create(dev.name, limits):
                self.record({"kind": "cgroup", "path": path}, f"created cgroup {path}")
            self._tap(dev.name)
            disks = self._disks(dev.name, dev.ip)
            started[dev.name] = time.monotonic()
            self._qemu(dev.name, len(cpus[dev.name]), memory, disks, cg.procs_files(dev.name))
        for name, t0 in started.items():
            self._wait_for_ssh(name, t0)
        self._inventory(cpus)

    def _running(self, name: str) -> bool:
        for rec in self.state.find("process", role="qemu", device=name):
            if _system.pid_alive(rec["pid"], rec["start"]):
                return True
            raise TestbedError(f"the VM of {name} (pid {rec['pid']}) has died (console: "
                               f"{self.paths.rundir(name) / 'console.log'}); run "
                               "`paretopipe testbed down` and `up` again")
        return False

    def _tap(self, name: str) -> None:
        tap = self.topo.host_if(name)
        if self.state.has("link", name=tap) and _system.link_exists(tap):
            return
        if _system.link_exists(tap):
            raise TestbedError(f"a link named {tap} exists and is not this testbed's"
                               + _FOREIGN_HINT)
        _system.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        self.record({"kind": "link", "name": tap}, f"created tap {tap} for {name}")
        _system.run(["ip", "link", "set", "dev", tap, "mtu", str(self.topo.mtu), "master",
                     self.topo.bridge, "up"])

    def _disks(self, name: str, ip: str) -> list[tuple[Path, str, bool]]:
        """(file, format, read-only) in guest order: vda root overlay, vdb seed, vdc wheels."""
        run = self.paths.rundir(name)
        run.mkdir(parents=True, exist_ok=True)
        overlay, seed = run / "disk.qcow2", run / "seed.img"
        for path in (overlay, seed):
            path.unlink(missing_ok=True)
        _system.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                     str(self.image.rootfs), str(overlay)])
        self.record({"kind": "file", "path": str(overlay)},
                    f"created {name}'s copy-on-write disk {overlay}")
        key = self.paths.host_key(name)
        env = (f"NAME={shlex.quote(name)}\nADDR={ip}/{self.topo.prefix_len}\n"
               f"NIC={shlex.quote(self.topo.nic)}\n")
        ext4_image(seed, None, {
            "device.env": (env.encode(), 0o644),
            "ssh_host_ed25519_key": (key.read_bytes(), 0o600),
            "ssh_host_ed25519_key.pub": (key.with_suffix(".pub").read_bytes(), 0o644),
            "authorized_keys": (self.paths.authorized_keys.read_bytes(), 0o600),
        }, "4M")
        self.record({"kind": "file", "path": str(seed)}, f"created {name}'s seed disk")
        disks = [(overlay, "qcow2", False), (seed, "raw", True)]
        if self.wheelhouse_img is not None:
            disks.append((self.wheelhouse_img, "raw", True))
        return disks

    def _qemu(self, name: str, vcpus: int, memory: int, disks: list[tuple[Path, str, bool]],
              procs_files: list[Path]) -> None:
        run = self.paths.rundir(name)
        pidfile, console = run / "qemu.pid", run / "console.log"
        pidfile.unlink(missing_ok=True)
        argv = ["qemu-system-x86_64", "-name", f"paretopipe-{self.topo.prefix}{name}",
                "-machine", "q35", "-accel", f"tcg,tb-size={TCG_TB_MB}", "-cpu", "max",
                "-smp", str(vcpus), "-m", f"{memory >> 20}M", "-nodefaults", "-no-user-config",
                "-display", "none", "-serial", f"file:{console}", "-monitor", "none",
                "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
                "-append", "root=/dev/vda rw console=ttyS0 init=/sbin/paretopipe-init "
                           "net.ifnames=0 panic=-1 quiet",
                "-netdev", f"tap,id=n0,ifname={self.topo.host_if(name)},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={_mac(self.topo, name)}",
                # A guest kernel panic ends QEMU (panic=-1 reboots, -no-reboot exits).
                "-no-reboot", "-pidfile", str(pidfile), "-daemonize"]
        for path, fmt, ro in disks:
            argv += ["-drive", f"file={path},if=virtio,format={fmt},cache=unsafe"
                     + (",readonly=on" if ro else "")]
        # Join the cgroups first, then become QEMU: the CPU cap and memory limit hold for it.
        join = "; ".join(f"echo $$ > {shlex.quote(str(f))}" for f in procs_files)
        script = f"set -e; {join}; exec \"$@\"" if join else 'exec "$@"'
        proc = subprocess.run(["/bin/sh", "-c", script, "sh", *argv], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not _system.wait_for_file(pidfile, 10.0):
            raise TestbedError(f"QEMU for {name} did not start: "
                               f"{(proc.stderr or proc.stdout).strip() or 'no pid file'}")
        pid = int(pidfile.read_text().split()[0])
        self.record({"kind": "process", "role": "qemu", "device": name, "pid": pid,
                     "start": _system.start_time(pid)},
                    f"started VM {name} ({vcpus} vCPU, {memory >> 20} MiB; pid {pid})")

    def _wait_for_ssh(self, name: str, t0: float) -> None:
        ip = self.topo.device(name).ip
        rec = self.state.find("process", role="qemu", device=name)[0]

        def answers() -> bool:
            if not _system.pid_alive(rec["pid"], rec["start"]):
                raise TestbedError(f"the VM of {name} exited while booting; console: "
                                   f"{_tail(self.paths.rundir(name) / 'console.log')}")
            probe = _system.run(_ssh.ssh_argv(self.paths, ip, "true"), check=False, timeout=30)
            return probe.returncode == 0

        if poll_until(answers, t0 + self.boot_timeout_s - time.monotonic(), interval_s=1.0):
            self.boot_s[name] = round(time.monotonic() - t0, 1)
            self.progress(f"{name} answers ssh on {ip} after {self.boot_s[name]} s")
            return
        raise TestbedError(f"{name} did not answer ssh on {ip} within {self.boot_timeout_s:g} s"
                           f"; console: {_tail(self.paths.rundir(name) / 'console.log')}")

    def _inventory(self, cpus: dict[str, list[int]]) -> None:
        topo, paths = self.topo, self.paths
        common_args = " ".join(_ssh.ssh_options(paths)[2:])
        groups: dict[str, dict] = {"edge": {"hosts": {}}, "servers": {"hosts": {}}}
        for dev in topo.devices:
            prof = topo.profile(dev.profile)
            groups[dev.group]["hosts"][dev.name] = {
                "ansible_host": dev.ip,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(paths.client_key),
                "ansible_ssh_common_args": common_args,
                "paretopipe_ip": dev.ip,
                "paretopipe_nic": topo.nic,
                "paretopipe_workdir": DEVICE_WORKDIR,
                "paretopipe_profile": prof.name,
                "paretopipe_threads": prof.threads or len(cpus[dev.name]),
            }
        all_vars = {
            # The real-device settings come from group_vars (inventory/examples'); these say
            # what is particular to virtual devices: offline, wheels on a disk of their own.
            "paretopipe_vm": True,
            "paretopipe_controller_ip": topo.controller_ip,
            "paretopipe_testbed_state_dir": str(paths.root),
            "python_env_apt_update": False,
        }
        if self.wheelhouse_img is not None:
            all_vars["wheelhouse_device_dir"] = WHEELHOUSE_MOUNT
            all_vars["wheelhouse_push"] = False
            # Byte-compiling the wheels' modules is most of the install under TCG: they are
            # compiled when first imported instead (roles/wheelhouse, wheelhouse_compile).
            all_vars["wheelhouse_compile"] = False
        doc = {"all": {"vars": all_vars, "children": groups}}
        text = ("# Generated by `paretopipe testbed up --kind vm`; do not edit.\n"
                "# `paretopipe testbed down` removes it.\n"
                + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000))
        path = Path(self.state.inventory)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text() == text:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        if not self.state.has("file", path=str(path)):
            self.record({"kind": "file", "path": str(path)}, f"wrote inventory {path}")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no console log at {path})"


def up(topology: Topology | str | Path | None = None, *, state_dir: str | Path | None = None,
       inventory: str | Path | None = None, cache_dir: str | Path | None = None,
       wheelhouse: str | Path | None = None, boot_timeout_s: float = BOOT_TIMEOUT_S,
       progress: Progress | None = None) -> dict:
    """Boot one VM per device of ``topology``; a second call changes nothing and says so.

    ``wheelhouse``: a folder of wheels attached to every device as a read-only disk, mounted at
    /srv/wheelhouse (the inventory tells the wheelhouse role to install from there). If a step
    fails, everything this call made is removed again before the error is raised.
    """
    _system.require_root()
    _system.require_tools()
    topo = _topology(topology)
    if wheelhouse is not None and not Path(wheelhouse).is_dir():
        raise ConfigError(f"--wheelhouse {wheelhouse}: no such folder (build one with "
                          "playbooks/wheelhouse.yml)")
    paths = Paths.at(state_dir)
    progress = progress or quiet
    inv = str(Path(inventory).resolve() if inventory else default_vm_inventory_path())
    image = ensure_image(cache_dir, progress=progress)
    with locked(paths):
        state = State.load(paths)
        if state is not None and (state.topology != topo.to_dict() or state.device_kind != KIND):
            raise TestbedError(f"another testbed ({state.device_kind}) is up in {paths.root}; "
                               "run `paretopipe testbed down` first")
        check_inventory(state, inv)
        state = state or State(topology=topo.to_dict(), inventory=inv, device_kind=KIND)
        wheel_img = None
        if wheelhouse is not None:
            wheel_img = paths.root / "run" / "wheelhouse.img"
        builder = _VmBuilder(topo, paths, state, image, wheel_img, boot_timeout_s, progress)

        def build() -> None:
            if wheel_img is not None and not state.has("file", path=str(wheel_img)):
                wheel_img.parent.mkdir(parents=True, exist_ok=True)
                size_mb = sum(f.stat().st_size for f in Path(wheelhouse).rglob("*")
                              if f.is_file()) * 1.3 // (1 << 20) + 256
                ext4_image(wheel_img, Path(wheelhouse), {}, f"{int(size_mb)}M")
                builder.record({"kind": "file", "path": str(wheel_img)},
                               f"made the wheelhouse disk {wheel_img} from {wheelhouse}")
            builder.build()

        return {**build_or_roll_back(builder, build), "kind": KIND, "image": str(image.root),
                "image_build_s": image.build_s, "boot_s": builder.boot_s}
