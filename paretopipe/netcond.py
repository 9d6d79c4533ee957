"""Network conditions: what they are, the commands that impose them, and parsers that check them.

A :class:`Condition` is one-way delay, jitter, random loss and a rate. It is imposed *per
device*, towards its peer devices only, so a condition applied on two devices gives each
direction of the link the delay (the round trip is about ``2 * delay_ms``) and caps each
direction at the rate. Traffic to anything that is not a peer (the controller's SSH) is not
shaped.

Everything that builds a command is pure: it returns argv lists (``["tc", "qdisc", ...]``) and
runs nothing. The Ansible role on real devices, the emulated testbed, and the unit tests (which
pin the exact command lines) all use the same builders.

On a device's NIC (``egress_commands``)::

    htb root 1:  default 1:1 (everything else, unshaped)
      class 1:1   rate 10gbit
      class 1:10  rate 10gbit   <- u32 filters: ip dst <peer>/32
        netem 10: delay/jitter/loss        (when wanted and the kernel has sch_netem)
          tbf 20: rate                     (child of netem, or directly under 1:10)

Ingress (``ingress_commands``, both directions for the rate): an ``ingress`` qdisc with u32
filters on ``ip src <peer>/32`` redirecting (``mirred``) to an ifb device, whose root is the same
netem/tbf chain.

Without ``sch_netem`` (the emulated testbed on this project's machines) delay and jitter come
from a user-space delay line (:mod:`paretopipe.testbed.delayline`) fed by
``iptables ... -j NFQUEUE`` and loss from ``iptables -m statistic --mode random``; see
:func:`iptables_commands`.

Command line for the Ansible role (``--dry-run`` prints the argv lists as JSON)::

    python -m paretopipe.netcond apply --dev eth0 --peers 10.0.0.2,10.0.0.3 \\
        --delay 20ms --jitter 2ms --loss 0.5% --rate 10mbit [--ingress-ifb ifb0] [--dry-run]
    python -m paretopipe.netcond apply --dev eth0 --peers 10.0.0.2 --condition wan
    python -m paretopipe.netcond clear --dev eth0 [--ingress-ifb ifb0] [--dry-run]
    python -m paretopipe.netcond show --dev eth0        # tc -s qdisc, parsed, as JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import ConfigError

__all__ = [
    "Condition",
    "parse_delay",
    "parse_rate",
    "parse_loss",
    "load_conditions",
    "default_conditions_path",
    "tbf_args",
    "netem_args",
    "egress_commands",
    "ingress_commands",
    "clear_commands",
    "iptables_commands",
    "iptables_clear_commands",
    "parse_tc_qdisc",
    "configured_from_qdiscs",
    "parse_ping",
]

DEFAULT_CHAIN = "PP-SHAPE"
_UNSHAPED_RATE = "10gbit"  # the htb classes' own rate: far above anything shaped
_HTB_QUANTUM = "60000"  # explicit, so htb does not warn about r2q at 10gbit


@dataclass(frozen=True)
class Condition:
    """A network condition. ``delay_ms``/``jitter_ms`` are one-way; ``rate_mbit=None`` = unlimited."""

    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"condition name {self.name!r}: use letters, digits, '-', '_', '.'")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ConfigError(f"condition {self.name}: delay and jitter must be >= 0")
        if self.jitter_ms > self.delay_ms:
            raise ConfigError(
                f"condition {self.name}: jitter {self.jitter_ms:g} ms exceeds delay "
                f"{self.delay_ms:g} ms; packets cannot arrive before they are sent"
            )
        if not 0 <= self.loss_pct < 100:
            raise ConfigError(f"condition {self.name}: loss must be in [0, 100) %")
        if self.rate_mbit is not None and self.rate_mbit <= 0:
            raise ConfigError(f"condition {self.name}: rate must be > 0 (leave it out: unlimited)")

    @property
    def has_delay(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    @property
    def is_null(self) -> bool:
        return not self.has_delay and self.loss_pct == 0 and self.rate_mbit is None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        parts = []
        if self.rate_mbit is not None:
            parts.append(f"{_fmt_rate(self.rate_mbit)}")
        if self.has_delay:
            parts.append(f"{self.delay_ms:g} ms" + (f" ±{self.jitter_ms:g} ms" if self.jitter_ms else ""))
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}% loss")
        return f"{self.name} ({', '.join(parts) or 'unshaped'})"


# --- parsing values ----------------------------------------------------------------------------

_TIME_UNITS = {"us": 1e-3, "usec": 1e-3, "ms": 1.0, "msec": 1.0, "s": 1e3, "sec": 1e3}
_RATE_UNITS = {
    "bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3,
    "bps": 8e-6, "kbps": 8e-3, "mbps": 8.0, "gbps": 8e3,  # tc's "bps" means bytes per second
}


def _parse_quantity(value: str | float | int, units: dict[str, float], what: str,
                    examples: str) -> float:
    """A number with a unit from ``units`` (a bare number is already in the base unit)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in {**units, "": 1.0}:
        raise ConfigError(f"bad {what} {value!r}: write e.g. {examples}")
    return float(match.group(1)) * units.get(match.group(2), 1.0)


def parse_delay(value: str | float | int) -> float:
    """``"20ms"``, ``"0.5ms"``, ``"200us"``, ``"1s"`` or a number of milliseconds -> ms."""
    return _parse_quantity(value, _TIME_UNITS, "time", "20ms, 0.5ms, 200us or 1s")


def parse_rate(value: str | float | int | None) -> float | None:
    """``"10mbit"``, ``"1gbit"``, ``"500kbit"`` or a number of Mbit/s -> Mbit/s (None stays None)."""
    if value is None:
        return None
    return _parse_quantity(value, _RATE_UNITS, "rate", "10mbit, 1gbit or 500kbit")


def parse_loss(value: str | float | int) -> float:
    """``"0.5%"`` or a number -> percent."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*%?\s*", str(value))
    if not match:
        raise ConfigError(f"bad loss {value!r}: write e.g. 0.5%")
    return float(match.group(1))


def default_conditions_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "conditions.yml"


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file whose top level is a mapping; errors name the file and the fix."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must be a YAML mapping")
    return data


def load_conditions(path: str | Path | None = None) -> dict[str, Condition]:
    """Named conditions from a YAML file (default: the packaged ``data/conditions.yml``)."""
    file = Path(path) if path is not None else default_conditions_path()
    table = read_yaml_mapping(file, "conditions").get("conditions")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{file}: expected a mapping 'conditions: {{name: {{rate, delay, ...}}}}'")
    out: dict[str, Condition] = {}
    for name, spec in table.items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{file}: condition {name!r} must be a mapping")
        unknown = set(spec) - {"delay", "jitter", "loss", "rate", "description"}
        if unknown:
            raise ConfigError(
                f"{file}: condition {name!r} has unknown keys {sorted(unknown)} "
                "(allowed: delay, jitter, loss, rate, description)"
            )
        out[str(name)] = Condition(
            name=str(name),
            delay_ms=parse_delay(spec.get("delay", 0)),
            jitter_ms=parse_delay(spec.get("jitter", 0)),
            loss_pct=parse_loss(spec.get("loss", 0)),
            rate_mbit=parse_rate(spec.get("rate")),
        )
    return out


# --- tc builders -------------------------------------------------------------------------------


def _fmt_rate(rate_mbit: float) -> str:
    kbit = round(rate_mbit * 1000)
    if kbit % 1_000_000 == 0:
        return f"{kbit // 1_000_000}gbit"
    if kbit % 1000 == 0:
        return f"{kbit // 1000}mbit"
    return f"{kbit}kbit"


def _fmt_ms(ms: float) -> str:
    us = round(ms * 1000)
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"


def _fmt_pct(pct: float) -> str:
    return f"{pct:g}%"


def tbf_burst_limit(rate_mbit: float, delay_ms: float = 0.0) -> tuple[int, int]:
    """tbf's bucket and queue, in bytes.

    Burst: 4 ms at the rate, at least 16 KiB (a few full frames). Limit: a bandwidth-delay
    product of queue (at least 50 ms, and the round trip ``2 * delay`` + 20 ms), so one TCP flow
    can fill the link; smaller queues make TCP fall well short of the rate on long paths.
    """
    rate_bytes = rate_mbit * 1e6 / 8
    burst = max(16384, int(rate_bytes * 0.004))
    limit = burst + int(rate_bytes * max(0.05, 2 * delay_ms / 1e3 + 0.02))
    return burst, limit


def tbf_args(rate_mbit: float, delay_ms: float = 0.0) -> list[str]:
    burst, limit = tbf_burst_limit(rate_mbit, delay_ms)
    return ["tbf", "rate", _fmt_rate(rate_mbit), "burst", str(burst), "limit", str(limit)]


def netem_args(cond: Condition) -> list[str]:
    """netem's delay/jitter/loss; its queue holds 1 s at the rate (or the default 1000)."""
    args = ["netem"]
    if cond.has_delay:
        args += ["delay", _fmt_ms(cond.delay_ms)]
        if cond.jitter_ms:
            args.append(_fmt_ms(cond.jitter_ms))
    if cond.loss_pct:
        args += ["loss", _fmt_pct(cond.loss_pct)]
    if cond.rate_mbit is not None:
        packets = int(cond.rate_mbit * 1e6 / 8 / 1500 * max(1.0, 4 * cond.delay_ms / 1e3))
        args += ["limit", str(max(1000, packets))]
    return args


def _leaf_commands(tc: list[str], dev: str, parent: str, cond: Condition, netem: bool,
                   rate: bool) -> list[list[str]]:
    """netem (10:) and/or tbf (20:) under ``parent``; nothing when neither applies."""
    cmds: list[list[str]] = []
    use_netem = netem and (cond.has_delay or cond.loss_pct > 0)
    use_tbf = rate and cond.rate_mbit is not None
    if use_netem:
        cmds.append([*tc, "qdisc", "add", "dev", dev, "parent", parent, "handle", "10:",
                     *netem_args(cond)])
    if use_tbf:
        tbf_parent = "10:1" if use_netem else parent
        cmds.append([*tc, "qdisc", "add", "dev", dev, "parent", tbf_parent, "handle", "20:",
                     *tbf_args(cond.rate_mbit, cond.delay_ms)])  # type: ignore[arg-type]
    return cmds


def _check_peers(peers: Sequence[str]) -> list[str]:
    if not peers:
        raise ConfigError("no peers given: shaping applies only to traffic to peer devices")
    out = []
    for peer in peers:
        try:
            out.append(str(ipaddress.IPv4Address(peer)))
        except ValueError as exc:
            raise ConfigError(f"peer {peer!r} is not an IPv4 address") from exc
    return out


def egress_commands(dev: str, peers: Sequence[str], cond: Condition, *, netem: bool = True,
                    rate: bool = True, tc: Sequence[str] = ("tc",)) -> list[list[str]]:
    """Shape what ``dev`` sends to ``peers``: htb classifies, netem delays/drops, tbf limits.

    ``netem=False`` leaves delay, jitter and loss out (for kernels without sch_netem, where the
    testbed's delay line and iptables do them); ``rate=False`` leaves out tbf.
    """
    peers = _check_peers(peers)
    tcv = list(tc)
    cmds = [
        [*tcv, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
        [*tcv, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
         "rate", _UNSHAPED_RATE, "quantum", _HTB_QUANTUM],
        [*tcv, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
         "rate", _UNSHAPED_RATE, "quantum", _HTB_QUANTUM],
    ]
    cmds += _leaf_commands(tcv, dev, "1:10", cond, netem, rate)
    for peer in peers:
        cmds.append([*tcv, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                     "prio", "1", "u32", "match", "ip", "dst", f"{peer}/32", "flowid", "1:10"])
    return cmds


def ingress_commands(dev: str, ifb: str, peers: Sequence[str], cond: Condition, *,
                     netem: bool = False, rate: bool = True, create_ifb: bool = True,
                     tc: Sequence[str] = ("tc",), ip: Sequence[str] = ("ip",)) -> list[list[str]]:
    """Shape what ``dev`` receives from ``peers``, through the ifb device ``ifb``."""
    peers = _check_peers(peers)
    tcv, ipv = list(tc), list(ip)
    cmds: list[list[str]] = []
    if create_ifb:
        cmds.append([*ipv, "link", "add", ifb, "type", "ifb"])
    cmds.append([*ipv, "link", "set", "dev", ifb, "up"])
    leaves = _leaf_commands(tcv, ifb, "root", cond, netem, rate)
    # The ifb carries peer traffic only, so its root is the netem/tbf chain itself.
    for cmd in leaves:
        i = cmd.index("parent")
        if cmd[i + 1] == "root":
            cmd[i:i + 2] = ["root"]
    cmds += leaves
    cmds.append([*tcv, "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"])
    for peer in peers:
        cmds.append([*tcv, "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "ip",
                     "prio", "1", "u32", "match", "ip", "src", f"{peer}/32",
                     "action", "mirred", "egress", "redirect", "dev", ifb])
    return cmds


def clear_commands(dev: str, ifb: str | None = None, *, delete_ifb: bool = True,
                   tc: Sequence[str] = ("tc",), ip: Sequence[str] = ("ip",)) -> list[list[str]]:
    """Remove what the builders above installed. Each may fail harmlessly if absent."""
    tcv, ipv = list(tc), list(ip)
    cmds = [[*tcv, "qdisc", "del", "dev", dev, "root"],
            [*tcv, "qdisc", "del", "dev", dev, "ingress"]]
    if ifb:
        cmds.append([*ipv, "link", "del", ifb] if delete_ifb
                    else [*tcv, "qdisc", "del", "dev", ifb, "root"])
    return cmds


# --- iptables builders (kernels without netem) -------------------------------------------------


def iptables_commands(peers: Sequence[str], *, loss_pct: float = 0.0, queue: int | None = None,
                      chain: str = DEFAULT_CHAIN, iptables: Sequence[str] = ("iptables",)
                      ) -> list[list[str]]:
    """Loss and delay for packets *received* from ``peers`` (mangle PREROUTING).

    Loss is dropped at the receiver, after the wire, as a lossy link would (dropping on the
    sender's OUTPUT would hand TCP a local error instead of a lost packet). ``queue`` sends the
    surviving packets to an NFQUEUE served by the delay line.
    """
    peers = _check_peers(peers)
    if not loss_pct and queue is None:
        return []
    ipt = [*iptables, "-t", "mangle"]
    cmds = [[*ipt, "-N", chain]]
    if loss_pct:
        cmds.append([*ipt, "-A", chain, "-m", "statistic", "--mode", "random",
                     "--probability", f"{loss_pct / 100:.6g}", "-j", "DROP"])
    if queue is not None:
        cmds.append([*ipt, "-A", chain, "-j", "NFQUEUE", "--queue-num", str(queue)])
    for peer in peers:
        cmds.append([*ipt, "-A", "PREROUTING", "-s", f"{peer}/32", "-j", chain])
    return cmds


def iptables_clear_commands(peers: Sequence[str], *, chain: str = DEFAULT_CHAIN,
                            iptables: Sequence[str] = ("iptables",)) -> list[list[str]]:
    peers = _check_peers(peers)
    ipt = [*iptables, "-t", "mangle"]
    cmds = [[*ipt, "-D", "PREROUTING", "-s", f"{peer}/32", "-j", chain] for peer in peers]
    cmds += [[*ipt, "-F", chain], [*ipt, "-X", chain]]
    return cmds


# --- parsers -----------------------------------------------------------------------------------

_QDISC_HEAD = re.compile(
    r"^qdisc (?P<kind>\S+) (?P<handle>\S+) (?:dev (?P<dev>\S+) )?(?P<where>root|parent \S+)"
    r"(?P<rest>.*)$"
)
_SENT = re.compile(
    r"Sent (?P<bytes>\d+) bytes (?P<pkts>\d+) pkt \(dropped (?P<dropped>\d+), "
    r"overlimits (?P<overlimits>\d+) requeues (?P<requeues>\d+)\)"
)
_BACKLOG = re.compile(r"backlog (?P<bytes>\S+?)b? (?P<pkts>\d+)p")


def parse_tc_qdisc(text: str, dev: str | None = None) -> list[dict]:
    """``tc -s qdisc show`` output -> one dict per qdisc (kind, handle, dev, parent, options,
    counters). ``tc ... show dev X`` leaves the device out of each line: pass it as ``dev``."""
    out: list[dict] = []
    for line in text.splitlines():
        head = _QDISC_HEAD.match(line.strip())
        if head:
            where = head.group("where")
            out.append({
                "kind": head.group("kind"),
                "handle": head.group("handle"),
                "dev": head.group("dev") or dev,
                "parent": "root" if where == "root" else where.split()[1],
                "options": head.group("rest").strip(),
            })
            continue
        if not out:
            continue
        sent = _SENT.search(line)
        if sent:
            out[-1].update({
                "sent_bytes": int(sent.group("bytes")),
                "sent_packets": int(sent.group("pkts")),
                "dropped": int(sent.group("dropped")),
                "overlimits": int(sent.group("overlimits")),
                "requeues": int(sent.group("requeues")),
            })
            continue
        backlog = _BACKLOG.search(line)
        if backlog:
            out[-1]["backlog_packets"] = int(backlog.group("pkts"))
    return out


def _tc_time_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def _tc_rate_mbit(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)([KMG]?)bit", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}[match.group(2)]


def configured_from_qdiscs(qdiscs: Sequence[dict]) -> dict:
    """What the installed netem/tbf qdiscs impose: delay_ms, jitter_ms, loss_pct, rate_mbit.

    Reads the options tc prints back, so it shows what the kernel accepted (rounded by tc),
    not what was asked for. Values absent from every qdisc are None.
    """
    found: dict = {"delay_ms": None, "jitter_ms": None, "loss_pct": None, "rate_mbit": None}
    for q in qdiscs:
        words = q.get("options", "").split()
        if q["kind"] == "netem":
            if "delay" in words:
                i = words.index("delay")
                found["delay_ms"] = _tc_time_ms(words[i + 1])
                if i + 2 < len(words) and re.fullmatch(r"[0-9.]+(us|ms|s)", words[i + 2]):
                    found["jitter_ms"] = _tc_time_ms(words[i + 2])
            if "loss" in words:
                found["loss_pct"] = float(words[words.index("loss") + 1].rstrip("%"))
        elif q["kind"] == "tbf" and "rate" in words:
            found["rate_mbit"] = _tc_rate_mbit(words[words.index("rate") + 1])
    return found


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_TIME = re.compile(r"time[=<]([0-9.]+) ?ms")
_PING_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max/(?:mdev|stddev) = "
                       r"([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms")


def parse_ping(text: str) -> dict:
    """iputils/busybox ping output -> transmitted, received, loss_pct, rtt_{min,avg,max,mdev}_ms,
    and, when ping printed one line per reply (no ``-q``), times_ms and rtt_median_ms."""
    counts = _PING_COUNTS.search(text)
    if not counts:
        raise ValueError("no ping summary found in the output")
    sent, got = int(counts.group(1)), int(counts.group(2))
    out: dict = {
        "transmitted": sent,
        "received": got,
        "loss_pct": round(100.0 * (sent - got) / sent, 3) if sent else None,
        "rtt_min_ms": None, "rtt_avg_ms": None, "rtt_max_ms": None, "rtt_mdev_ms": None,
    }
    times = [float(t) for t in _PING_TIME.findall(text)]
    out["times_ms"] = times
    out["rtt_median_ms"] = statistics.median(times) if times else None
    rtt = _PING_RTT.search(text)
    if rtt:
        for key, value in zip(("rtt_min_ms", "rtt_avg_ms", "rtt_max_ms", "rtt_mdev_ms"),
                              rtt.groups()):
            out[key] = float(value)
    return out


# --- the tolerance rule -----------------------------------------------------------------------

#: What a shaped hop must achieve: RTT within 2 ms + 10% of the configured RTT (2 x one-way
#: delay), rate (TCP goodput) within 10% of the configured rate. One rule for `testbed check`,
#: the netem role and its measure_hop.py.
RATE_TOLERANCE = 0.10
DELAY_TOLERANCE_MS = 2.0
DELAY_TOLERANCE_REL = 0.10


def judge(cond: Condition, *, rtt_ms: float | None, rate_mbit: float | None) -> dict[str, Any]:
    """Judge a hop's measured RTT (ms, a median) and rate (Mbit/s, TCP goodput) against `cond`.

    Returns ``{"checks": {"rtt": {...}, "rate": {...}}, "ok": bool, "expected": {...},
    "tolerance": {...}}``. A check is ``ok: None`` (not judged) when the condition sets no rate,
    or sets loss (TCP backs off on loss by design); a missing measurement fails its check.
    ``ok`` is False when any check failed."""
    expected_rtt = 2 * cond.delay_ms
    bound = DELAY_TOLERANCE_MS + DELAY_TOLERANCE_REL * expected_rtt
    checks: dict[str, dict[str, Any]] = {"rtt": {
        "ok": rtt_ms is not None and abs(rtt_ms - expected_rtt) <= bound,
        "expected_ms": expected_rtt, "bound_ms": round(bound, 3)}}
    if cond.rate_mbit is None:
        checks["rate"] = {"ok": None, "reason": "no rate configured"}
    elif cond.loss_pct:
        checks["rate"] = {"ok": None, "reason": "loss configured: TCP backs off, rate not judged"}
    else:
        checks["rate"] = {
            "ok": rate_mbit is not None and abs(rate_mbit - cond.rate_mbit) <= RATE_TOLERANCE * cond.rate_mbit,
            "expected_mbit": cond.rate_mbit,
            "bound_mbit": round(RATE_TOLERANCE * cond.rate_mbit, 3),
        }
    return {
        "checks": checks,
        "ok": all(c["ok"] is not False for c in checks.values()),
        "expected": {"rtt_ms": expected_rtt},
        "tolerance": {"rate_pct": RATE_TOLERANCE * 100,
                      "rtt": f"{DELAY_TOLERANCE_MS:g} ms + {DELAY_TOLERANCE_REL:.0%} of expected"},
    }


# --- command line ------------------------------------------------------------------------------


def _condition_from_args(args: argparse.Namespace) -> Condition:
    if args.condition:
        if any(v is not None for v in (args.delay, args.jitter, args.loss, args.rate)):
            raise ConfigError("give either --condition or --delay/--jitter/--loss/--rate, not both")
        table = load_conditions(args.conditions)
        if args.condition not in table:
            raise ConfigError(f"unknown condition {args.condition!r} (known: {', '.join(table)})")
        return table[args.condition]
    cond = Condition(
        name="custom",
        delay_ms=parse_delay(args.delay or 0),
        jitter_ms=parse_delay(args.jitter or 0),
        loss_pct=parse_loss(args.loss or 0),
        rate_mbit=parse_rate(args.rate),
    )
    if cond.is_null:
        raise ConfigError("nothing to apply: give --condition or at least one of "
                          "--delay/--jitter/--loss/--rate")
    return cond


def _execute(cmds: list[list[str]], *, tolerate_failure: bool) -> int:
    for cmd in cmds:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise ConfigError(f"{cmd[0]} is not installed (iproute2 / iptables)") from exc
        if proc.returncode != 0:
            msg = proc.stderr.strip() or proc.stdout.strip()
            if tolerate_failure:
                continue
            hint = ""
            if "netem" in cmd and "unknown" in msg.lower():
                hint = ("; this kernel has no sch_netem: use --no-netem (rate only), or on the "
                        "emulated testbed `paretopipe testbed shape`")
            raise ConfigError(f"`{' '.join(cmd)}` failed: {msg}{hint}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paretopipe.netcond",
        description="Apply, clear or show a network condition on a NIC, towards peer IPs only.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    apply = sub.add_parser("apply", help="install netem + tbf for traffic to --peers")
    apply.add_argument("--dev", required=True, help="network interface, e.g. eth0")
    apply.add_argument("--peers", required=True,
                       help="comma-separated IPv4 addresses of the peer devices")
    apply.add_argument("--condition", help="a named condition (see --conditions)")
    apply.add_argument("--conditions", help="conditions YAML file (default: the packaged one)")
    apply.add_argument("--delay", help="one-way delay, e.g. 20ms")
    apply.add_argument("--jitter", help="jitter, e.g. 2ms")
    apply.add_argument("--loss", help="random loss, e.g. 0.5%%")
    apply.add_argument("--rate", help="rate, e.g. 10mbit")
    apply.add_argument("--ingress-ifb", metavar="IFB",
                       help="also cap what arrives from the peers, through this ifb device")
    apply.add_argument("--no-netem", action="store_true",
                       help="rate only (kernels without sch_netem)")
    apply.add_argument("--dry-run", action="store_true", help="print the commands as JSON")
    clear = sub.add_parser("clear", help="remove what apply installed (missing parts are fine)")
    clear.add_argument("--dev", required=True)
    clear.add_argument("--ingress-ifb", metavar="IFB")
    clear.add_argument("--dry-run", action="store_true")
    show = sub.add_parser("show", help="print `tc -s qdisc show dev DEV`, parsed, as JSON")
    show.add_argument("--dev", required=True)
    args = parser.parse_args(argv)
    try:
        if args.action == "apply":
            cond = _condition_from_args(args)
            peers = [p.strip() for p in args.peers.split(",") if p.strip()]
            cmds = egress_commands(args.dev, peers, cond, netem=not args.no_netem)
            if args.ingress_ifb:
                cmds += ingress_commands(args.dev, args.ingress_ifb, peers, cond, netem=False)
            if args.dry_run:
                print(json.dumps(cmds, indent=1))
                return 0
            # Start from a clean NIC so that apply can be run again with another condition.
            _execute(clear_commands(args.dev, args.ingress_ifb), tolerate_failure=True)
            try:
                _execute(cmds, tolerate_failure=False)
            except ConfigError:
                _execute(clear_commands(args.dev, args.ingress_ifb), tolerate_failure=True)
                raise
            print(json.dumps({"applied": cond.to_dict(), "dev": args.dev, "peers": peers}))
            return 0
        if args.action == "clear":
            cmds = clear_commands(args.dev, args.ingress_ifb)
            if args.dry_run:
                print(json.dumps(cmds, indent=1))
                return 0
            return _execute(cmds, tolerate_failure=True)
        proc = subprocess.run(["tc", "-s", "qdisc", "show", "dev", args.dev],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"tc -s qdisc show dev {args.dev} failed: {proc.stderr.strip()}")
        qdiscs = parse_tc_qdisc(proc.stdout, dev=args.dev)
        print(json.dumps({"dev": args.dev, "qdiscs": qdiscs,
                          "configured": configured_from_qdiscs(qdiscs)}, indent=1))
        return 0
    except ConfigError as exc:
        print(f"netcond: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
