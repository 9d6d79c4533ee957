"""The command lines that impose a condition: ``tc`` qdiscs, and ``iptables`` where netem is missing.

Everything here is pure: it returns argv lists (``["tc", "qdisc", ...]``) and runs nothing. The
Ansible role on real devices, the emulated testbed, and the unit tests (which pin the exact
command lines) all use these builders. The package docstring draws the qdisc tree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from paretopipe.errors import ConfigError
from paretopipe.netcond.conditions import Condition, require_constant
from paretopipe.netcond.units import fmt_ms, fmt_pct, fmt_rate

__all__ = [
    "DEFAULT_CHAIN",
    "clear_commands",
    "egress_commands",
    "ingress_commands",
    "iptables_clear_commands",
    "iptables_commands",
    "netem_args",
    "rate_change_commands",
    "rate_steps",
    "replay_schedule",
    "tbf_args",
    "tbf_burst_limit",
]

DEFAULT_CHAIN = "PP-SHAPE"
_UNSHAPED_RATE = "10gbit"  # the htb classes' own rate: far above anything shaped
_HTB_QUANTUM = "60000"  # explicit, so htb does not warn about r2q at 10gbit
#: what a trace's outage (rate 0) is replayed as: tbf needs a positive rate; 8 kbit/s lets
#: about one 1500-byte packet through in 1.5 s, which is an outage for any tensor
OUTAGE_RATE_MBIT = 0.008
#: what a trace's unlimited segment is replayed as: the htb classes' own rate
UNLIMITED_RATE_MBIT = 10_000.0


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
    return ["tbf", "rate", fmt_rate(rate_mbit), "burst", str(burst), "limit", str(limit)]


def netem_args(cond: Condition) -> list[str]:
    """netem's delay/jitter/loss; its queue holds 1 s at the rate (or the default 1000)."""
    args = ["netem"]
    if cond.has_delay:
        args += ["delay", fmt_ms(cond.delay_ms)]
        if cond.jitter_ms:
            args.append(fmt_ms(cond.jitter_ms))
    if cond.loss_pct:
        args += ["loss", fmt_pct(cond.loss_pct)]
    if cond.rate_mbit is not None:
        packets = int(cond.rate_mbit * 1e6 / 8 / 1500 * max(1.0, 4 * cond.delay_ms / 1e3))
        args += ["limit", str(max(1000, packets))]
    return args


def _leaf_commands(tc: list[str], dev: str, parent: str, cond: Condition, netem: bool,
                   rate: bool) -> list[list[str]]:
    """netem (10:) and/or tbf (20:) under ``parent``; nothing when neither applies."""
    require_constant(cond, "tc shaping")
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


# --- iptables (kernels without netem) ----------------------------------------------------------


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


def rate_change_commands(dev: str, rate_mbit: float | None, delay_ms: float = 0.0, *,
                         ifb: str | None = None, netem: bool = False, ifb_netem: bool | None = None,
                         tc: Sequence[str] = ("tc",)) -> list[list[str]]:
    """``tc qdisc change`` of the tbf (handle 20:) that :func:`egress_commands` (and, with
    ``ifb``, :func:`ingress_commands`) installed, to a trace segment's rate: the step a replay
    takes at a segment boundary. The qdiscs stay; only their rate, bucket and queue change.
    ``None`` (unlimited) and ``0`` (an outage) become :data:`UNLIMITED_RATE_MBIT` and
    :data:`OUTAGE_RATE_MBIT`. ``netem``/``ifb_netem``: whether the tbf sits under netem on
    ``dev``/``ifb`` (``ifb_netem`` defaults to ``netem``; the testbed's egress never has netem).
    """
    rate = UNLIMITED_RATE_MBIT if rate_mbit is None else max(rate_mbit, OUTAGE_RATE_MBIT)
    tcv = list(tc)
    parent = ["parent", "10:1"] if netem else ["parent", "1:10"]
    cmds = [[*tcv, "qdisc", "change", "dev", dev, *parent, "handle", "20:", *tbf_args(rate, delay_ms)]]
    if ifb is not None:
        ifb_parent = ["parent", "10:1"] if (netem if ifb_netem is None else ifb_netem) else ["root"]
        cmds.append([*tcv, "qdisc", "change", "dev", ifb, *ifb_parent, "handle", "20:",
                     *tbf_args(rate, delay_ms)])
    return cmds


def rate_steps(trace, until_s: float) -> list[tuple[float, float | None, float]]:
    """``(t_s, rate_mbit, delay_ms)`` at each segment boundary of ``trace`` in ``[0, until_s)``,
    loops unrolled, leaving out segments with the rate of the one before (pure)."""
    out: list[tuple[float, float | None, float]] = []
    previous: object = object()
    for t_s, seg in trace.boundaries(until_s):
        if seg.rate_mbit == previous:
            continue
        out.append((t_s, seg.rate_mbit, seg.delay_ms))
        previous = seg.rate_mbit
    return out


def replay_schedule(trace, until_s: float, dev: str, *, ifb: str | None = None,
                    netem: bool = False, ifb_netem: bool | None = None
                    ) -> list[tuple[float, list[list[str]]]]:
    """When (seconds after measurement starts) to run which rate changes on one device, for
    ``trace`` (a :class:`~paretopipe.netcond.traces.Trace`) over a run of ``until_s``: one
    entry per segment boundary, loops unrolled; segments with the rate of the one before are
    skipped (:func:`rate_steps`). Delay, jitter and loss changes are not in it (see
    docs/testbed.md)."""
    return [(t_s, rate_change_commands(dev, rate, delay, ifb=ifb, netem=netem, ifb_netem=ifb_netem))
            for t_s, rate, delay in rate_steps(trace, until_s)]
