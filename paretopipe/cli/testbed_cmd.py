"""`paretopipe testbed`: the emulated multi-device testbed on this machine (needs root)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from paretopipe.errors import ConfigError

_DESCRIPTION = """\
An emulated edge testbed on this machine: each device is a network namespace on a bridge,
with its own sshd, working directory and CPU/memory limits (an emulated Pi is a CPU-limited
slice of this machine, not a Raspberry Pi). Ansible reaches the devices through the
inventory `up` writes (inventory/emulated/hosts.yml). Needs root. See docs/testbed.md."""


def _human(args: argparse.Namespace) -> Any:
    """Where headers and progress go: stdout, or stderr with --json (stdout is then JSON only)."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


def _progress_to(args: argparse.Namespace) -> Callable[[str], None]:
    stream = _human(args)
    return lambda msg: print(f"  {msg}", file=stream, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR",
                   help="where the testbed keeps keys, state and device working dirs "
                        "(default: $PARETOPIPE_TESTBED_DIR or <checkout>/.state/testbed)")


def _parse_between(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise ConfigError("--between needs at least two devices, e.g. --between pi1,pi2")
    return names


def _up(args: argparse.Namespace) -> int:
    from paretopipe import testbed

    topology = args.topology
    if args.replay is not None:  # every replay name and profile checked before anything changes
        if args.kind != "netns":
            raise ConfigError("--replay is for --kind netns (the emulated devices)")
        from paretopipe.testbed.topology import load_topology, with_replay

        topology = with_replay(load_topology(args.topology), args.replay, timing=args.replay_timing,
                               output=args.replay_output)
    elif args.replay_timing != "median" or args.replay_output != "compute":
        raise ConfigError("--replay-timing and --replay-output need --replay DEVICE=PROFILE")
    print("testbed up:" if args.kind == "netns" else "testbed up (virtual machines):",
          file=_human(args), flush=True)
    if args.kind == "vm":
        from paretopipe.testbed import vm

        result = vm.up(args.topology, state_dir=args.state_dir, inventory=args.inventory,
                       cache_dir=args.image_cache, wheelhouse=args.wheelhouse,
                       boot_timeout_s=args.boot_timeout or vm.BOOT_TIMEOUT_S,
                       progress=_progress_to(args))
    elif args.wheelhouse or args.image_cache or args.boot_timeout is not None:
        raise ConfigError("--wheelhouse, --image-cache and --boot-timeout are for --kind vm")
    else:
        result = testbed.up(topology, state_dir=args.state_dir, inventory=args.inventory,
                            progress=_progress_to(args))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    if not result["changed"]:
        print("  already up; nothing changed")
    devices = ", ".join(f"{n} ({ip})" for n, ip in result["devices"].items())
    print(f"devices: {devices}\ninventory: {result['inventory']}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from paretopipe import testbed

    print("testbed down:", file=_human(args), flush=True)
    result = testbed.down(state_dir=args.state_dir, topology=args.topology, progress=_progress_to(args))
    if args.json:
        print(json.dumps(result, indent=1))
    elif not result["changed"]:
        print("  nothing was up; nothing left behind")
    else:
        print("  done; nothing left behind")
    return 0


def _status(args: argparse.Namespace) -> int:
    from paretopipe import testbed

    st = testbed.status(state_dir=args.state_dir)
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if (not st["up"] or st["healthy"]) else 1
    if not st["up"]:
        print(f"testbed: down (state dir {st['state_dir']})")
        if st.get("leftovers"):
            print("  leftovers of the default topology: " + ", ".join(st["leftovers"])
                  + " (remove with `paretopipe testbed down`)")
        return 0
    print(f"testbed: up, {'healthy' if st['healthy'] else 'UNHEALTHY'} "
          f"(bridge {st['bridge']} {st['subnet']}, controller {st['controller_ip']}, "
          f"cgroup {st['cgroup_version']})")
    print(f"  {'device':8} {'group':8} {'ip':15} {'profile':11} {'cpus':6} {'quota':6} "
          f"{'memory':8} sshd")
    for name, d in st["devices"].items():
        lim = d["limits"]
        mem = lim.get("memory_bytes")
        quota = lim.get("cpu_quota")
        sshd = (f"pid {d['sshd_pid']}" + ("" if d["sshd_alive"] else " DEAD")
                + ("" if d["ssh_port_open"] else " (port 22 closed)"))
        print(f"  {name:8} {d['group']:8} {d['ip']:15} {d['profile']:11} "
              f"{lim.get('cpus', '?'):6} {'-' if quota is None else f'{quota:g}':6} "
              f"{'-' if mem is None else f'{mem / 2**30:g}G':8} {sshd}")
    sh = st["shaping"]
    if sh:
        c = sh["condition"]
        print(f"  shaping: {c['name']} (rate {c['rate_mbit'] or '-'} Mbit/s, delay "
              f"{c['delay_ms']:g} ms, jitter {c['jitter_ms']:g} ms, loss {c['loss_pct']:g}%) "
              f"between {', '.join(sh['between'])} via {sh['method']}")
    else:
        print("  shaping: none")
    print(f"  inventory: {st['inventory']}")
    return 0 if st["healthy"] else 1


def _shape(args: argparse.Namespace) -> int:
    from paretopipe import netcond, testbed

    table = netcond.load_conditions(args.conditions)
    if args.list:
        for cond in table.values():
            print(f"  {cond.describe()}")
        return 0
    custom = [args.delay, args.jitter, args.loss, args.rate]
    if args.condition and any(v is not None for v in custom):
        raise ConfigError("give either --condition or --delay/--jitter/--loss/--rate, not both")
    if args.condition:
        if args.condition not in table:
            raise ConfigError(f"unknown condition {args.condition!r} "
                              f"(known: {', '.join(table)}; edit {args.conditions or 'the file'} "
                              "or pass --conditions FILE)")
        cond = table[args.condition]
    elif any(v is not None for v in custom):
        cond = netcond.Condition(
            name="custom", delay_ms=netcond.parse_delay(args.delay or 0),
            jitter_ms=netcond.parse_delay(args.jitter or 0),
            loss_pct=netcond.parse_loss(args.loss or 0), rate_mbit=netcond.parse_rate(args.rate))
    else:
        raise ConfigError("say what to apply: --condition NAME (see --list) or "
                          "--delay/--jitter/--loss/--rate")
    print(f"testbed shape {cond.describe()}:", file=_human(args), flush=True)
    result = testbed.shape(cond, _parse_between(args.between), state_dir=args.state_dir,
                           progress=_progress_to(args))
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


def _unshape(args: argparse.Namespace) -> int:
    from paretopipe import testbed

    print("testbed unshape:")
    result = testbed.unshape(state_dir=args.state_dir, progress=_progress_to(args))
    if not result["changed"]:
        print("  nothing was shaped")
    return 0


def _check(args: argparse.Namespace) -> int:
    from paretopipe import testbed

    pair = None
    if args.pair:
        pair = [n.strip() for n in args.pair.split(",")]
    if args.trace:
        return _check_trace(args, pair)
    print("testbed check: measuring RTT (ping) and rate (bulk TCP)...", file=_human(args), flush=True)
    res = testbed.check(pair, state_dir=args.state_dir, duration_s=args.duration)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0 if res["ok"] else 1
    c, m, ck = res["configured"], res["measured"], res["checks"]
    print(f"  {res['pair'][0]} -> {res['pair'][1]}, condition {c['name']}"
          + (f" via {res['method']}" if res["method"] else ""))
    verdict = {True: "ok", False: "FAIL", None: "not judged"}
    print(f"  rtt:  configured {res['expected']['rtt_ms']:g} ms (2 x {c['delay_ms']:g} ms), "
          f"measured {m['rtt_ms']} ms (median; min {m['rtt_min_ms']}, max {m['rtt_max_ms']}), "
          f"bound ±{ck['rtt']['bound_ms']:g} ms: {verdict[ck['rtt']['ok']]}")
    rate_cfg = "unlimited" if c["rate_mbit"] is None else f"{c['rate_mbit']:g} Mbit/s"
    print(f"  rate: configured {rate_cfg}, measured {m['rate_mbit']} Mbit/s (TCP goodput): "
          f"{verdict[ck['rate']['ok']]}"
          + (f" ({ck['rate']['reason']})" if ck["rate"].get("reason") else ""))
    print(f"  loss: configured {c['loss_pct']:g}%, ping lost {m['ping_loss_pct']:g}%")
    print(f"result: {'ok' if res['ok'] else 'FAIL'}")
    return 0 if res["ok"] else 1


def _check_trace(args: argparse.Namespace, pair: list[str] | None) -> int:
    from paretopipe import testbed

    print(f"testbed check: replaying trace condition {args.trace} and measuring per "
          f"{args.bin:g} s bin (bulk TCP)...", file=_human(args), flush=True)
    res = testbed.check_trace(args.trace, pair, conditions_file=args.conditions,
                              state_dir=args.state_dir, duration_s=args.duration, bin_s=args.bin)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0 if res["ok"] else 1
    print(f"  {res['between'][0]} -> {res['between'][1]}, {res['part_used']}, via {res['mechanism']}; "
          f"{res['changes']} changes, the latest {res['change_late_ms_max']:g} ms after its time")
    verdict = {True: "ok", False: "MISS", None: "settling, not judged"}
    for b in res["bins"]:
        cap = "unlimited" if b["capacity_mbit"] is None else f"{b['capacity_mbit']:g}"
        print(f"  t={b['t_s']:>6g} s  capacity {cap:>9} Mbit/s  achieved {b['achieved_mbit']:>8g} Mbit/s  "
              f"{verdict[b['ok']]}")
    print(f"result: {'ok' if res['ok'] else 'FAIL'} ({res['passed']} of {res['judged']} settled bins within "
          f"{res['tolerance']:.0%}; at least {res['ok_share']:.0%} must be)")
    return 0 if res["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    tb = subparsers.add_parser("testbed", help="emulated multi-device testbed on this machine",
                               description=_DESCRIPTION,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = tb.add_subparsers(dest="testbed_command", metavar="SUBCOMMAND")
    tb.set_defaults(func=lambda _args: (tb.print_help(), 2)[1])

    p = sub.add_parser("up", help="create the devices (idempotent)",
                       description="Create namespaces, bridge, sshds, cgroups and the Ansible "
                                   "inventory. Running it again changes nothing.")
    _common(p)
    p.add_argument("--topology", metavar="FILE", help="topology YAML (default: packaged "
                   "pi1, pi2 (edge, rpi4) and gpu (server) on 10.77.0.0/24)")
    p.add_argument("--inventory", metavar="FILE",
                   help="where to write the inventory (default: inventory/emulated/hosts.yml; "
                        "inventory/vm/hosts.yml for --kind vm)")
    p.add_argument("--kind", choices=("netns", "vm"), default="netns",
                   help="netns: network namespaces sharing this kernel (fast; default); vm: "
                        "QEMU virtual machines, each with Debian's own kernel, disk and sshd, "
                        "provisioned by Ansible as real devices are")
    p.add_argument("--wheelhouse", metavar="DIR",
                   help="vm: a folder of wheels attached to each device as a read-only disk "
                        "(/srv/wheelhouse); build it with playbooks/wheelhouse.yml")
    p.add_argument("--image-cache", metavar="DIR",
                   help="vm: where the device image is built and kept "
                        "(default: $PARETOPIPE_VM_CACHE or /var/cache/paretopipe/vm)")
    p.add_argument("--boot-timeout", type=float, metavar="S",
                   help="vm: seconds to wait for each device's ssh (default: 600)")
    p.add_argument("--replay", metavar="DEV=PROFILE[,...]",
                   help="devices that replay a measured profile (`paretopipe profile` on the real device), "
                        "e.g. pi1=pi4.json,gpu=server.json: their stages take the profiled time for their blocks "
                        "(also `replay:` per device in the topology; docs/testbed.md, Replay)")
    p.add_argument("--replay-timing", choices=("median", "draw"), default="median",
                   help="for --replay: per-block median, or a seeded draw from the recorded spread (default: median)")
    p.add_argument("--replay-output", choices=("compute", "stored"), default="compute",
                   help="for --replay: compute for real and wait out the rest, or send outputs computed beforehand "
                        "(for a device faster than this host) (default: compute)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_up)

    p = sub.add_parser("down", help="remove everything the testbed made",
                       description="Stop processes, remove namespaces, links, qdiscs, cgroups, "
                                   "rules and the inventory; then verify nothing is left.")
    _common(p)
    p.add_argument("--topology", metavar="FILE",
                   help="without a state file: remove what exists of this topology")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_down)

    p = sub.add_parser("status", help="what exists now (exit 1 if unhealthy)")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser(
        "shape", help="apply a network condition between devices",
        description="Apply a named condition or explicit values between devices (default: all "
                    "devices; the controller's SSH is never shaped). Delay, jitter and loss apply "
                    "in each direction, so the round trip is about 2 x delay. Replaces the "
                    "condition in force. A trace condition shapes its first segment and starts a "
                    "follower that replays the trace's rate from each run's first counted batch: "
                    "runs signal it through the clock file this prints (--json: trace.clock; the "
                    "Ansible sweep passes it to the source as network extra.trace_clock).")
    _common(p)
    p.add_argument("--condition", metavar="NAME", help="a named condition (see --list)")
    p.add_argument("--conditions", metavar="FILE",
                   help="conditions YAML (default: paretopipe/data/conditions.yml)")
    p.add_argument("--list", action="store_true", help="list the named conditions and exit")
    p.add_argument("--delay", help="one-way delay, e.g. 20ms")
    p.add_argument("--jitter", help="jitter (uniform ±), e.g. 2ms")
    p.add_argument("--loss", help="random loss, e.g. 0.5%%")
    p.add_argument("--rate", help="rate cap per direction, e.g. 10mbit")
    p.add_argument("--between", metavar="A,B[,...]", help="devices to shape between")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_shape)

    p = sub.add_parser("unshape", help="remove the network condition in force")
    _common(p)
    p.set_defaults(func=_unshape)

    p = sub.add_parser("check", help="measure RTT and rate; compare with the condition",
                       description="Ping and a timed bulk TCP transfer between two devices. "
                                   "Passes when the RTT is within 2 ms + 10%% of 2 x delay and "
                                   "the rate within 10%% (exit 1 otherwise).")
    _common(p)
    p.add_argument("--pair", metavar="SRC,DST",
                   help="devices to measure between (default: the first two shaped)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="transfer length in seconds (default: 2 s, longer on slow long paths)")
    p.add_argument("--trace", metavar="CONDITION",
                   help="a trace condition: shape its first segment, replay it for --duration "
                        "(default: the trace, at most 60 s), judge achieved against capacity per "
                        "--bin, then unshape. Passes when 80%% of the settled bins are within 15%%")
    p.add_argument("--bin", type=float, default=0.5, metavar="S", help="bin length with --trace (default 0.5)")
    p.add_argument("--conditions", metavar="FILE",
                   help="conditions YAML for --trace (default: paretopipe/data/conditions.yml)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_check)


if __name__ == "__main__":  # pragma: no cover
    from paretopipe.cli import main

    sys.exit(main(["testbed", *sys.argv[1:]]))
