#!/usr/bin/env python3
"""measure_hop.py: measure one hop of a shaped chain, or judge a measurement.

``measure_hop.py measure --peer IP --port P --seconds S``: ping a peer, then send to its rate
receiver; prints one JSON line: rtt_ms (median of the replies), the ping summary, what was sent.

``measure_hop.py judge --condition JSON --rtt-ms R --rate-mbit X``: judge a hop's RTT and the
rate its receiver measured against the condition applied, by the package's one tolerance rule
(:func:`paretopipe.netcond.judge`); prints the verdict as one JSON line.

Runs with the device's Python (paretopipe installed: its ping parser, probe and rule are reused).
"""

import argparse
import json
import subprocess
import sys

from paretopipe.errors import ConfigError
from paretopipe.netcond import Condition, judge, parse_ping
from paretopipe.testbed.probe import send


def _measure(args: argparse.Namespace) -> dict:
    ping = subprocess.run(["ping", "-n", "-c", str(args.count), "-i", "0.2", args.peer],
                          capture_output=True, text=True, check=False)
    try:
        stats = parse_ping(ping.stdout)
    except ValueError:
        stats = {"loss_pct": None}
    rtt = stats.get("rtt_median_ms") or stats.get("rtt_avg_ms")
    sent = send(args.peer, args.port, seconds=args.seconds, nbytes=None, seed=0, sha=False,
                connect_timeout_s=10.0)
    return {"rtt_ms": rtt, "loss_pct": stats.get("loss_pct"), "ping": stats, "sent": sent}


def _number(text: str) -> float | None:
    return None if text in ("", "None", "null") else float(text)


def _judge(args: argparse.Namespace) -> dict:
    cond = Condition(**json.loads(args.condition))
    return judge(cond, rtt_ms=_number(args.rtt_ms), rate_mbit=_number(args.rate_mbit))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    m = sub.add_parser("measure", help="ping the peer, then send to its rate receiver")
    m.add_argument("--peer", required=True)
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--seconds", type=float, required=True)
    m.add_argument("--count", type=int, default=10)
    j = sub.add_parser("judge", help="judge a measured hop against the applied condition")
    j.add_argument("--condition", required=True, help="the condition as JSON (what netcond apply printed)")
    j.add_argument("--rtt-ms", required=True, help="measured RTT in ms (empty or None: not measured)")
    j.add_argument("--rate-mbit", required=True, help="measured rate in Mbit/s (empty or None: not measured)")
    args = parser.parse_args()
    try:
        out = _measure(args) if args.action == "measure" else _judge(args)
    except (ValueError, TypeError, ConfigError) as exc:
        print(f"measure_hop.py {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
