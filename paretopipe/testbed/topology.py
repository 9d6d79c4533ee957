"""Topology and device profiles of the emulated testbed: YAML in, frozen dataclasses out."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import ConfigError
from paretopipe.configfile import read_yaml_mapping

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
GROUPS = ("edge", "servers")
_IFNAME_MAX = 15


@dataclass(frozen=True)
class Profile:
    """CPU and memory limits of one kind of emulated device (see ``data/profiles.yml``)."""

    name: str
    cpus: int | None  # cores to pin; None = all
    cpu_quota: float | None  # cores' worth of CPU time; None = unlimited
    threads: int | None
    memory_bytes: int | None
    description: str = ""


@dataclass(frozen=True)
class Device:
    name: str
    group: str
    profile: str
    ip: str
    cpuset: str | None = None  # explicit cores, e.g. "0" or "0-1"; None = allocate
    # a measured profile (`paretopipe profile`) this device replays (paretopipe.runtime.replay)
    replay: str | None = None
    replay_timing: str = "median"
    replay_output: str = "compute"

    def replay_vars(self) -> dict | None:
        """The device's replay as the inventory carries it (``paretopipe_replay``), or None."""
        if self.replay is None:
            return None
        return {"profile": self.replay, "timing": self.replay_timing, "output": self.replay_output}


@dataclass(frozen=True)
class Topology:
    prefix: str
    bridge: str
    subnet: str
    controller_ip: str
    nic: str
    mtu: int
    devices: tuple[Device, ...]
    profiles: tuple[Profile, ...]

    def device(self, name: str) -> Device:
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise ConfigError(
            f"no device {name!r} in the testbed (devices: {', '.join(self.names)})"
        )

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def profile(self, name: str) -> Profile:
        for prof in self.profiles:
            if prof.name == name:
                return prof
        raise ConfigError(f"unknown profile {name!r}")

    def netns(self, device: str) -> str:
        return f"{self.prefix}{device}"

    def host_if(self, device: str) -> str:
        return f"{self.prefix}{device}"

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def to_dict(self) -> dict:
        """Plain JSON types (lists, not tuples), as the state file stores it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> Topology:
        return cls(
            prefix=data["prefix"], bridge=data["bridge"], subnet=data["subnet"],
            controller_ip=data["controller_ip"], nic=data["nic"], mtu=int(data["mtu"]),
            devices=tuple(Device(**d) for d in data["devices"]),
            profiles=tuple(Profile(**p) for p in data["profiles"]),
        )


def parse_size(value: str | int | None) -> int | None:
    """``"4G"``, ``"512M"``, ``"1.5G"`` or bytes -> bytes (None stays None)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ConfigError(f"bad memory size {value!r}: write e.g. 4G or 512M")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(match.group(1)) * scale[match.group(2).upper()])


def load_profiles(path: str | Path | None = None) -> dict[str, Profile]:
    """Device profiles from YAML (default: the packaged ``data/profiles.yml``)."""
    file = Path(path) if path is not None else DATA_DIR / "profiles.yml"
    table = read_yaml_mapping(file, "profiles").get("profiles")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{file}: expected 'profiles: {{name: {{cpus, cpu_quota, ...}}}}'")
    out = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{file}: profile {name!r} must be a mapping")
        unknown = set(spec) - {"cpus", "cpu_quota", "threads", "memory", "description"}
        if unknown:
            raise ConfigError(f"{file}: profile {name!r} has unknown keys {sorted(unknown)}")
        cpus = spec.get("cpus", "all")
        if cpus != "all" and (not isinstance(cpus, int) or cpus < 1):
            raise ConfigError(f"{file}: profile {name!r}: cpus must be a positive integer or 'all'")
        quota = spec.get("cpu_quota")
        if quota is not None and (not isinstance(quota, (int, float)) or quota <= 0):
            raise ConfigError(f"{file}: profile {name!r}: cpu_quota must be > 0 or null")
        threads = spec.get("threads")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"{file}: profile {name!r}: threads must be a positive integer or null")
        out[str(name)] = Profile(
            name=str(name),
            cpus=None if cpus == "all" else cpus,
            cpu_quota=None if quota is None else float(quota),
            threads=threads,
            memory_bytes=parse_size(spec.get("memory")),
            description=str(spec.get("description", "")),
        )
    return out


def load_topology(path: str | Path | None = None, profiles: str | Path | None = None) -> Topology:
    """Load and validate a topology (default: the packaged ``data/topology.yml``)."""
    file = Path(path) if path is not None else DATA_DIR / "topology.yml"
    data = read_yaml_mapping(file, "topology")
    known = {"prefix", "bridge", "subnet", "controller_ip", "nic", "mtu", "devices", "profiles"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{file}: unknown keys {sorted(unknown)} (allowed: {sorted(known)})")
    prof_path = profiles if profiles is not None else data.get("profiles")
    if prof_path is not None and not Path(prof_path).is_absolute():
        prof_path = file.parent / prof_path
    table = load_profiles(prof_path)
    raw_devices = data.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise ConfigError(f"{file}: 'devices' must be a non-empty list")
    devices = []
    for i, item in enumerate(raw_devices):
        if not isinstance(item, dict):
            raise ConfigError(f"{file}: device #{i + 1} must be a mapping")
        extra = set(item) - {"name", "group", "profile", "ip", "cpuset", "replay"}
        missing = {"name", "group", "profile", "ip"} - set(item)
        if extra or missing:
            raise ConfigError(
                f"{file}: device #{i + 1}: missing {sorted(missing)} / unknown {sorted(extra)}"
            )
        device = Device(name=str(item["name"]), group=str(item["group"]),
                        profile=str(item["profile"]), ip=str(item["ip"]),
                        cpuset=None if item.get("cpuset") is None else str(item["cpuset"]))
        if item.get("replay") is not None:
            device = _replaying(device, item["replay"], base=file.parent, source=str(file))
        devices.append(device)
    topo = Topology(
        prefix=str(data.get("prefix", "pp-")),
        bridge=str(data.get("bridge", "br-pp")),
        subnet=str(data.get("subnet", "10.77.0.0/24")),
        controller_ip=str(data.get("controller_ip", "10.77.0.1")),
        nic=str(data.get("nic", "eth0")),
        mtu=int(data.get("mtu", 1500)),
        devices=tuple(devices),
        profiles=tuple({d.profile: table[d.profile] for d in devices if d.profile in table}
                       .values()),
    )
    validate(topo, table, source=str(file))
    return topo


def _replaying(dev: Device, spec: object, *, base: Path, source: str) -> Device:
    """``dev`` replaying ``spec`` (a profile path, or ``{profile, timing, output}``), the profile
    read and checked now: a file that is not a profile is an error before anything is built."""
    from paretopipe.runtime.replay import ReplaySetting

    if isinstance(spec, str):
        spec = {"profile": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("profile"), str) \
            or set(spec) - {"profile", "timing", "output"}:
        raise ConfigError(f"{source}: device {dev.name}: replay must be a profile file or "
                          "{profile: FILE, timing: median|draw, output: compute|stored}")
    path = Path(spec["profile"]).expanduser()
    path = path if path.is_absolute() else base / path
    setting = ReplaySetting.from_options(str(path), str(spec.get("timing", "median")),
                                         str(spec.get("output", "compute")))
    return dataclasses.replace(dev, replay=setting.profile.path, replay_timing=setting.timing.value,
                               replay_output=setting.output.value)


def with_replay(topo: Topology, spec: str, *, timing: str = "median", output: str = "compute") -> Topology:
    """``topo`` with the devices of ``spec`` (``pi1=pi4.json,gpu=server.json``, the CLI's
    ``--replay``) replaying those profiles. An unknown device, a malformed item or a file that
    is not a profile is a ConfigError, raised before the testbed changes."""
    from paretopipe.runtime.replay import parse_replay_map

    chosen = parse_replay_map(spec)
    for name in chosen:
        topo.device(name)  # an unknown name lists the devices there are
    devices = tuple(_replaying(d, {"profile": chosen[d.name], "timing": timing, "output": output},
                               base=Path.cwd(), source="--replay") if d.name in chosen else d
                    for d in topo.devices)
    return dataclasses.replace(topo, devices=devices)


def validate(topo: Topology, profiles: dict[str, Profile], *, source: str = "topology") -> None:
    """Reject a topology that cannot be built, naming what to change."""
    try:
        net = ipaddress.IPv4Network(topo.subnet)
    except ValueError as exc:
        raise ConfigError(f"{source}: subnet {topo.subnet!r} is not an IPv4 network") from exc
    if not net.is_private:
        raise ConfigError(f"{source}: subnet {topo.subnet} is not private; use e.g. 10.77.0.0/24")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,5}", topo.prefix):
        raise ConfigError(f"{source}: prefix {topo.prefix!r}: 1-6 of [a-z0-9-], starting a-z")
    for what, name in (("bridge", topo.bridge), ("nic", topo.nic)):
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.-]*", name) or len(name) > _IFNAME_MAX:
            raise ConfigError(f"{source}: {what} name {name!r} is not a valid interface name")
    if not 576 <= topo.mtu <= 65535:
        raise ConfigError(f"{source}: mtu {topo.mtu} out of range 576..65535")
    seen_ips = {topo.controller_ip}
    ip_of = lambda text, who: _ip_in(text, net, who, source)  # noqa: E731
    ip_of(topo.controller_ip, "controller_ip")
    names = set()
    for dev in topo.devices:
        if not re.fullmatch(r"[a-z][a-z0-9]*", dev.name):
            raise ConfigError(f"{source}: device name {dev.name!r}: use [a-z][a-z0-9]*")
        if dev.name in names:
            raise ConfigError(f"{source}: device {dev.name!r} appears twice")
        names.add(dev.name)
        if len(topo.host_if(dev.name)) > _IFNAME_MAX:
            raise ConfigError(
                f"{source}: interface {topo.host_if(dev.name)!r} exceeds {_IFNAME_MAX} "
                "characters; shorten the prefix or the device name"
            )
        if dev.group not in GROUPS:
            raise ConfigError(f"{source}: device {dev.name}: group must be one of {GROUPS}")
        if dev.profile not in profiles:
            raise ConfigError(
                f"{source}: device {dev.name}: unknown profile {dev.profile!r} "
                f"(known: {', '.join(profiles)})"
            )
        ip_of(dev.ip, f"device {dev.name}")
        if dev.ip in seen_ips:
            raise ConfigError(f"{source}: address {dev.ip} is used twice")
        seen_ips.add(dev.ip)
        if dev.cpuset is not None and not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*",
                                                       dev.cpuset):
            raise ConfigError(f"{source}: device {dev.name}: cpuset {dev.cpuset!r}: e.g. 0 or 0-1")
    if topo.bridge in {topo.host_if(n) for n in names}:
        raise ConfigError(f"{source}: bridge name {topo.bridge!r} clashes with a device link")


def _ip_in(text: str, net: ipaddress.IPv4Network, who: str, source: str) -> None:
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: {who}: {text!r} is not an IPv4 address") from exc
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{source}: {who}: {text} is not a host address in {net}")
