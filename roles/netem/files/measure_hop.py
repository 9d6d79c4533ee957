#!/usr/bin/env python3
"""measure_hop.py --peer IP --port P --seconds S: ping a peer, then send to its rate receiver.

Prints one JSON line: rtt_ms (median of the replies), the ping summary, and what was sent.
Runs with the device's Python (paretopipe installed: its ping parser and probe are reused).
"""

import argparse
import json
import subprocess
import sys

from paretopipe.netcond import parse_ping
from paretopipe.testbed.probe import send


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    ping = subprocess.run(["ping", "-n", "-c", str(args.count), "-i", "0.2", args.peer],
                          capture_output=True, text=True, check=False)
    try:
        stats = parse_ping(ping.stdout)
    except ValueError:
        stats = {"loss_pct": None}
    rtt = stats.get("rtt_median_ms") or stats.get("rtt_avg_ms")
    sent = send(args.peer, args.port, seconds=args.seconds, nbytes=None, seed=0, sha=False,
                connect_timeout_s=10.0)
    print(json.dumps({"rtt_ms": rtt, "loss_pct": stats.get("loss_pct"), "ping": stats, "sent": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
