"""`paretopipe trace make|show`: synthetic seeded traces, and what a trace file holds (docs/testbed.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from paretopipe.errors import ConfigError


def _cmd_make(args: argparse.Namespace) -> int:
    from paretopipe.netcond.maker import TraceSpec, make_text
    from paretopipe.netcond.traces import read_segments

    spec = TraceSpec(kind=args.kind, seed=args.seed, duration_s=args.duration, step_s=args.step,
                     low_mbit=args.low, high_mbit=args.high, delay_ms=args.delay,
                     outage_mbit=args.outage_rate)
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out}: made traces are segments tables; name the file *.csv")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(make_text(spec))
    print(f"wrote {read_segments(out).describe()}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from paretopipe.netcond.traces import read_trace

    trace = read_trace(args.file, fmt=args.format)
    print(trace.describe())
    if args.run is not None:
        print(f"  a {args.run:g} s run sees {trace.part_used(args.run)}")
    for seg in trace.segments:
        rate = "unlimited" if seg.rate_mbit is None else f"{seg.rate_mbit:g} Mbit/s"
        print(f"  t={seg.t_s:g} s  {rate}  delay {seg.delay_ms:g} ms ±{seg.jitter_ms:g} ms  "
              f"loss {seg.loss_pct:g}%")
    if trace.gilbert_elliott is not None:
        print(f"  burst loss (Gilbert-Elliott): {trace.gilbert_elliott.mean_loss_pct:.3g}% on average")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from paretopipe.netcond.maker import KINDS

    trace = subparsers.add_parser("trace", help="make or inspect link traces (conditions that move)")
    sub = trace.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    make = sub.add_parser(
        "make", help="write a seeded synthetic trace (a segments CSV)",
        description="Write a synthetic segments table: steps alternates --high and --low every --step; "
                    "walk is a bounded random walk of the rate; walk-away falls with distance from an "
                    "access point and recovers; outage is --high with short drops to --outage-rate. "
                    "The same arguments and --seed give the same bytes.")
    make.add_argument("kind", choices=KINDS, help="what kind of link")
    make.add_argument("--out", required=True, metavar="FILE", help="the CSV to write")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.add_argument("--duration", type=float, default=60.0, metavar="S",
                      help="length in seconds; the trace loops after it (default 60)")
    make.add_argument("--step", type=float, default=1.0, metavar="S",
                      help="segment length in seconds, at least 0.1 (default 1)")
    make.add_argument("--low", type=float, default=2.0, metavar="MBIT", help="lowest rate, Mbit/s (default 2)")
    make.add_argument("--high", type=float, default=50.0, metavar="MBIT", help="highest rate, Mbit/s (default 50)")
    make.add_argument("--delay", type=float, default=5.0, metavar="MS",
                      help="constant one-way delay, ms (default 5)")
    make.add_argument("--outage-rate", type=float, default=0.1, metavar="MBIT",
                      help="rate during an outage, Mbit/s (default 0.1)")
    make.add_argument("--force", action="store_true", help="replace --out if it exists")
    make.set_defaults(func=_cmd_make)
    show = sub.add_parser("show", help="read a trace file, check it and print its segments",
                          description="Read a Mahimahi trace or a segments table (CSV/YAML) and print "
                                      "its segments; a bad file gets one line naming the file and line.")
    show.add_argument("file", help="the trace file")
    show.add_argument("--format", choices=("mahimahi", "segments"),
                      help="default: .csv/.yml/.yaml are segments tables, anything else Mahimahi")
    show.add_argument("--run", type=float, metavar="S", help="also say which part a run of S seconds sees")
    show.set_defaults(func=_cmd_show)
