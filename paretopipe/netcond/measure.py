"""What a condition achieved: ``tc``'s and ``ping``'s reports, parsed, and the tolerance rule.

:func:`parse_tc_qdisc` and :func:`configured_from_qdiscs` read back what the kernel accepted;
:func:`parse_ping` reads a ping run; :func:`judge` compares a hop's measured RTT and rate with
the condition, by the one rule that `testbed check`, the netem role and its measure_hop.py share.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from paretopipe.netcond.conditions import Condition

__all__ = [
    "DELAY_TOLERANCE_MS",
    "DELAY_TOLERANCE_REL",
    "RATE_TOLERANCE",
    "configured_from_qdiscs",
    "judge",
    "parse_ping",
    "parse_tc_qdisc",
]

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
