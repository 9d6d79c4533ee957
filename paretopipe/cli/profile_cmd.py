"""`paretopipe profile` and `paretopipe predict` (docs/predict.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from paretopipe.cli.runtime_cmd import _positive_int
from paretopipe.errors import ConfigError


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    prof = subparsers.add_parser(
        "profile", help="time each block of a model on this device and write a profile file",
        description="Build MODEL here, run its blocks one by one on a synthetic batch, and record each "
                    "block's compute time (median and spread over --repeats passes after --warmup passes) "
                    "and output bytes. Run it on every device of a chain; `paretopipe predict` reads the files.")
    prof.add_argument("model", metavar="MODEL", help="model name (see `paretopipe models`)")
    prof.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    prof.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch (default: 8)")
    prof.add_argument("--input-size", type=_positive_int, metavar="PX", help="input height/width (default: the model's)")
    prof.add_argument("--num-classes", type=_positive_int, default=10, metavar="C", help="classifier outputs (default: 10)")
    prof.add_argument("--weights", metavar="FILE", help="state_dict checkpoint (default: seeded random weights)")
    prof.add_argument("--seed", type=int, default=0, help="seed for random weights and the input (default: 0)")
    prof.add_argument("--repeats", type=_positive_int, default=20, metavar="R", help="timed passes (default: 20, at least 3)")
    prof.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed passes first (default: 3)")
    prof.add_argument("--threads", type=_positive_int, metavar="N",
                      help="torch intra-op threads; use what the stage runs with (default: torch's)")
    prof.add_argument("--codecs", metavar="C[,C...]",
                      help="codecs to measure at every block boundary (ratio, encode and decode time) for "
                           "`predict --codecs` (default: every available one; see docs/codecs.md)")
    prof.add_argument("--codec-repeats", type=_positive_int, default=5, metavar="R",
                      help="times each codec encodes and decodes each boundary's tensor (default: 5)")
    prof.add_argument("--out", required=True, metavar="FILE", help="profile file to write (JSON; never overwritten)")
    prof.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    prof.set_defaults(func=_cmd_profile)

    pred = subparsers.add_parser(
        "predict", help="predict latency and throughput of every split from profiles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predict every split's latency and throughput from device profiles and a network condition, "
                    "mark the predicted Pareto frontier, and choose the splits worth measuring.\n\n"
                    "  transfer   = 8 * bytes / rate + delay + per-message overhead of the backend\n"
                    "  latency    = head compute + transfers + tail compute (the result returns to the source)\n"
                    "  throughput = min(1 / slowest stage or link, window / latency)",
        epilog="examples:\n"
               "  paretopipe predict --profiles pi1.json,pi2.json --condition wan\n"
               "  paretopipe predict --profiles pi.json --delay 20ms --rate 10mbit --window 4 --select\n"
               "  paretopipe predict --profiles pi.json --condition wifi --select --json   # for Ansible\n"
               "See docs/predict.md.")
    pred.add_argument("--profiles", required=True, action="append", metavar="P1.json[,P2.json...]",
                      help="profile files, one per device in chain order (or one used for every device); repeat "
                           "the option for more batch sizes: one set per batch size, each profiled at its batch size")
    cond = pred.add_mutually_exclusive_group()
    cond.add_argument("--condition", metavar="NAME",
                      help="a named network condition (see --conditions); without it or --delay/--rate: unshaped")
    cond.add_argument("--delay", metavar="T", help="one-way delay, e.g. 20ms (instead of --condition)")
    pred.add_argument("--rate", metavar="R", help="link rate, e.g. 10mbit (with --delay; default: no cap)")
    pred.add_argument("--network-label", metavar="LABEL",
                      help="label of the condition, as the runs' --network-label (default: the condition's name; "
                           "'custom' with --delay/--rate; 'none' for an unshaped link)")
    pred.add_argument("--conditions", metavar="FILE", help="conditions YAML (default: the packaged conditions.yml)")
    pred.add_argument("--backend", default="tcp", help="transport backend whose per-message overhead to add (default: tcp)")
    pred.add_argument("--overhead-ms", type=_non_negative_float, metavar="MS",
                      help="per-message overhead in ms, instead of the backend's measured value")
    pred.add_argument("--framing", type=_non_negative_float, metavar="F",
                      help="extra wire bytes per payload byte that the rate cap counts (default: "
                           "TCP over Ethernet at MTU 1500, 66/1448 = 0.0456)")
    pred.add_argument("--statistic", choices=("median", "mean"), default="median",
                      help="each block's time from the profile: median (default) or mean (for devices "
                           "with a CPU quota, whose throttling makes timings bimodal)")
    pred.add_argument("--windows", "--window", default="1", metavar="W,...",
                      help="max batches in flight, a comma list: every window is predicted (default: 1)")
    pred.add_argument("--codecs", "--codec", default="none", metavar="C[,C...]",
                      help="codecs of the tensor crossing each split, a comma list: every one is predicted from "
                           "the profiles' codec measurements (default: none; docs/codecs.md)")
    pred.add_argument("--batches", type=_positive_int, metavar="N",
                      help="predict the throughput a run of N counted batches reports (first send to last "
                           "completion: (N-1) periods + one latency) instead of the steady state's")
    pred.add_argument("--stages", type=_positive_int, metavar="S",
                      help="devices in the chain (default: the number of profiles, at least 2)")
    pred.add_argument("--tolerance", type=_non_negative_float, default=0.0, metavar="F",
                      help="--select also takes splits within this relative margin of the frontier, "
                           "e.g. 0.05 (default: 0)")
    pred.add_argument("--select", action="store_true",
                      help="print only the configurations to measure: the predicted frontier, its neighbours and "
                           "the two ends at every window, batch size and codec (one line per window, batch size and "
                           "codec: `w4 b8: K,K,...` or `w4 b8 int8: K,...`, the splits as sweep's --splits list)")
    pred.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pred.add_argument("--out", metavar="FILE", help="also write the prediction file (JSON) here, e.g. next to the results")
    pred.set_defaults(func=_cmd_predict)


def _cmd_profile(args: argparse.Namespace) -> int:
    from paretopipe.profiling import ProfileConfig, profile_model, write_profile

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"profile file {out} already exists; profiles are never overwritten "
                          "(delete it or pick another --out)")
    cfg = ProfileConfig(model=args.model, device=args.device, batch_size=args.batch_size,
                        input_size=args.input_size, num_classes=args.num_classes, weights=args.weights,
                        seed=args.seed, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                        codecs=None if args.codecs is None else tuple(args.codecs.split(",")),
                        codec_repeats=args.codec_repeats)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    doc = profile_model(cfg, progress=progress)
    write_profile(doc, out)
    s = doc["summary"]
    print(f"{out}: {doc['config']['model']}, {doc['num_blocks']} blocks, batch {doc['config']['batch_size']}, "
          f"{doc['config']['input_size']} px on {doc['config']['device']} ({doc['host']['hostname']}): "
          f"sum of block medians {s['sum_block_median_s'] * 1e3:.2f} ms, whole model "
          f"{s['fused_compute_s']['median'] * 1e3:.2f} ms (profiled in {s['wall_s']:.1f} s)")
    return 0


def link_from_args(args: argparse.Namespace) -> tuple[str, Any]:
    """The condition's label and :class:`~paretopipe.predict.Link` from the flags."""
    from paretopipe.netcond import load_conditions, parse_delay, parse_rate, require_constant
    from paretopipe.predict import TCP_ETHERNET_OVERHEAD, Link, backend_overhead

    overhead = args.overhead_ms / 1e3 if args.overhead_ms is not None else backend_overhead(args.backend)
    framing = TCP_ETHERNET_OVERHEAD if args.framing is None else args.framing
    if args.condition:
        if args.rate:
            raise ConfigError("--rate goes with --delay, not with --condition")
        table = load_conditions(args.conditions)
        if args.condition not in table:
            raise ConfigError(f"unknown condition {args.condition!r} (known: {', '.join(table)}); "
                              "see --conditions")
        c = table[args.condition]
        require_constant(c, "`paretopipe predict`")  # a moving link has no one rate to predict with
        rate = c.rate_mbit
        return args.network_label or c.name, Link(delay_s=c.delay_ms / 1e3, rate_bit_s=None if rate is None else rate * 1e6,
                            overhead_s=overhead, framing=framing)
    try:
        delay_ms = parse_delay(args.delay) if args.delay is not None else 0.0
        rate = parse_rate(args.rate)
    except ConfigError as exc:
        raise ConfigError(f"--delay/--rate: {exc}") from None
    label = "none" if args.delay is None and args.rate is None else "custom"
    return args.network_label or label, Link(delay_s=delay_ms / 1e3, rate_bit_s=None if rate is None else rate * 1e6,
                       overhead_s=overhead, framing=framing)


def splits_arg(selected: list[tuple[int, ...]]) -> str:
    """The `--splits` value for `paretopipe sweep` / sweep.yml: K or K1:K2, comma-separated."""
    return ",".join(":".join(str(k) for k in ks) for ks in selected)


def _name(ks: tuple[int, ...], w: int, b: int, codec: str) -> str:
    """``k=8 w4 b8`` (`` int8`` added for a codec other than none), as the plan names it."""
    return f"k={','.join(map(str, ks))} w{w} b{b}" + ("" if codec == "none" else f" {codec}")


def _by_window_batch(selected: list[tuple[tuple[int, ...], int, int, str]]) -> list[str]:
    groups: dict[tuple[int, int, str], list[tuple[int, ...]]] = {}
    for ks, w, b, c in selected:
        groups.setdefault((w, b, c), []).append(ks)
    return [f"w{w} b{b}{'' if c == 'none' else ' ' + c}: {splits_arg(sorted(ks))}"
            for (w, b, c), ks in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] != "none", g[0][2]))]


def _cmd_predict(args: argparse.Namespace) -> int:
    from paretopipe.codecs import parse_codec_list
    from paretopipe.plan import parse_positive_list
    from paretopipe.predict import (
        load_profile_files,
        predict_configurations,
        prediction_document,
        select_configurations,
        write_prediction,
    )
    from paretopipe.results import utc_now

    windows = parse_positive_list(args.windows, "--windows", "1,4")
    codecs = [c.name for c in parse_codec_list(args.codecs)]
    sets = [load_profile_files([p.strip() for p in group.split(",") if p.strip()], args.statistic)
            for group in args.profiles]
    label, link = link_from_args(args)
    stages = args.stages or max(2, len(sets[0]))
    preds = predict_configurations(sets, link, windows=windows, stages=stages, batches=args.batches, codecs=codecs)
    selected = select_configurations(preds, sets[0][0].num_blocks, tolerance=args.tolerance)
    doc = prediction_document(preds, [p for s in sets for p in s], link, backend=args.backend, condition=label,
                              selected=selected, tolerance=args.tolerance, created_utc=utc_now(),
                              batches=args.batches, statistic=args.statistic)
    if args.out:
        write_prediction(doc, args.out)
    total = len(preds)
    if args.select:
        if args.json:
            print(json.dumps({"selected": doc["selected"], "frontier": doc["frontier"], "total": total,
                              "saved": total - len(selected)}))
        else:
            print("\n".join(_by_window_batch(selected)))
        return 0
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(_table(preds, selected, label, link, sets[0][0]))
    return 0


def _table(preds: list[Any], selected: list[tuple[tuple[int, ...], int, int, str]], label: str, link: Any,
           first: Any) -> str:
    rate = "no cap" if link.rate_bit_s is None else f"{link.rate_bit_s / 1e6:g} Mbit/s"
    lines = [f"{first.model}, {first.input_size} px; network {label}: "
             f"{rate}, {link.delay_s * 1e3:g} ms one-way, {link.overhead_s * 1e3:.3f} ms per message",
             f"{'configuration':>22} {'latency ms':>11} {'img/s':>9} {'compute ms':>22} {'transfer ms':>20}  "
             f"bottleneck  mark"]
    chosen = set(selected)
    for p in preds:
        mark = ("frontier" if p.on_frontier else "") + (" *" if p.configuration in chosen else "")
        name = _name(*p.configuration)
        lines.append(f"{name:>22} {p.latency_s * 1e3:11.2f} {p.throughput_img_s:9.2f} "
                     f"{'/'.join(f'{c * 1e3:.1f}' for c in p.compute_s):>22} "
                     f"{'/'.join(f'{t * 1e3:.1f}' for t in p.hop_transfer_s):>20}  {p.bottleneck:<10}  {mark.strip()}")
    front = [_name(*p.configuration) for p in preds if p.on_frontier]
    lines.append(f"frontier: {', '.join(front)}; * = measure ({len(selected)} of {len(preds)}): "
                 + "; ".join(_by_window_batch(selected)))
    return "\n".join(lines)
