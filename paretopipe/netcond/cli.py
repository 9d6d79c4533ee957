"""``python -m paretopipe.netcond apply|clear|show``: impose, remove or show a condition on a NIC.

The command line the Ansible netem role runs on each device; ``--dry-run`` prints the argv
lists as JSON instead of running them. Errors are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence

from paretopipe.errors import ConfigError
from paretopipe.netcond.commands import clear_commands, egress_commands, ingress_commands
from paretopipe.netcond.conditions import Condition, load_conditions
from paretopipe.netcond.measure import configured_from_qdiscs, parse_tc_qdisc
from paretopipe.netcond.units import parse_delay, parse_loss, parse_rate

__all__ = ["main"]


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
