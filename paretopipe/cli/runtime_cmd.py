"""`paretopipe stage serve`, `paretopipe run`, `paretopipe sweep`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError
from paretopipe.plan.estimate import DEFAULT_BUDGET

_BACKEND_HELP = "transport backend: tcp (ours, no pickle) or rpc (PyTorch RPC: pickles, trusted networks only; docs/rpc.md)"


def _backends() -> list[str]:
    from paretopipe.transport import backend_names

    return backend_names()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # ---- stage serve
    stage = subparsers.add_parser("stage", help="stage workers (run on each device after the first)")
    stage_sub = stage.add_subparsers(dest="stage_command", metavar="ACTION")
    stage.set_defaults(func=lambda args: _usage(stage))
    serve = stage_sub.add_parser(
        "serve", help="run a long-lived stage worker",
        description="Serve stages of split models, one session at a time. Each session's handshake says which "
                    "model, split and stage to run; the stage is built (from the model and the weights spec, "
                    "or from --shards) and cached for the next session.")
    serve.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on, e.g. 0.0.0.0:29500")
    serve.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    serve.add_argument("--shards", metavar="DIR", help="build stages from the shard files in DIR (`paretopipe shard`)")
    serve.add_argument("--token-file", metavar="F", help="require peers to prove they hold the secret in F (HMAC-SHA256)")
    serve.add_argument("--threads", type=_positive_int, metavar="N", help="torch intra-op threads (default: torch's)")
    serve.add_argument("--backend", default="tcp", help=f"{_BACKEND_HELP} (default: tcp)")
    serve.add_argument("--codec", metavar="LIST",
                       help="codecs this worker accepts for the tensor at the split, comma-separated (default: all: "
                            "none, fp16, bf16, int8, each also +zstd or +lz4); a session asking for another is "
                            "refused at the handshake")
    _add_replay_args(serve, "this worker's stages")
    _add_rpc_args(serve, master=False)
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=_cmd_serve)

    # ---- run
    run = subparsers.add_parser(
        "run", help="run the source of a split-inference session and write its result file",
        description="Run the head of the model here, stream batches through the stage workers with at most "
                    "--window batches in flight, and write one result file (docs/results.md).")
    _add_model_args(run)
    run.add_argument("--split", type=int, action="append", required=True, metavar="K",
                     help="split index; repeat for more stages (--split 3 --split 9 = three stages)")
    run.add_argument("--stages", required=True, metavar="HOST:PORT[,HOST:PORT]",
                     help="the workers of stages 1.., comma-separated, in chain order")
    _add_session_args(run)
    length = run.add_mutually_exclusive_group()
    length.add_argument("--batches", type=_positive_int, metavar="N", help="counted batches after warm-up (default: 50)")
    length.add_argument("--duration", type=float, metavar="S", help="run for S seconds after warm-up instead")
    run.add_argument("--out", required=True, metavar="FILE", help="result file to write (never overwritten)")
    run.add_argument("--device", default="cpu", help="device for the head stage: cpu or cuda[:N] (default: cpu)")
    run.add_argument("--network-label", default="none", metavar="LABEL", help="network condition name (default: none)")
    run.add_argument("--network-json", metavar="JSON|@FILE",
                     help='{"configured": {...}, "measured": {...}, "extra": {...}} for config.network')
    run.add_argument("--sweep-id", metavar="ID", help="sweep this run belongs to")
    run.add_argument("--repeat", type=int, default=0, metavar="R", help="repeat index within a sweep (default: 0)")
    run.add_argument("--run-id", metavar="ID", help="run id (default: made from model, splits, backend, network, batch, window, repeat)")
    run.add_argument("--check", action="store_true",
                     help="compare the returned logits of up to 16 counted batches with the unsplit model on the "
                          "same inputs, after the run (fails the run if they differ)")
    run.add_argument("--codec", default="none", metavar="NAME",
                     help="codec of the tensor crossing each split: none, fp16, bf16, int8, each optionally +zstd "
                          "or +lz4 (default: none); docs/codecs.md")
    _add_replay_args(run, "the head stage (the blocks before the first split)")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=_cmd_run)

    # ---- sweep
    sweep = subparsers.add_parser(
        "sweep", help="run every configuration (splits x windows x batch sizes) x repeats with local workers on loopback",
        description="Start stage worker processes on loopback, run the source for each configuration (split "
                    "points x window x batch size) and repeat, and write one result file per run into --out. "
                    "Runs whose file says ok are skipped (resume); a failed run's file is set aside as "
                    "<run-id>.failed-<time>.json and the sweep goes on, so running it again redoes only those. "
                    "Planning, resume and repeats are the Ansible suite's own (paretopipe.plan; docs/ansible.md).")
    _add_model_args(sweep)
    sweep.add_argument("--splits", default="all", metavar="all|K,...|K1:K2,...",
                       help="split points: 'all' (every point 0..N) and K name points, each run takes DEVICES-1 of "
                            "them (every non-decreasing tuple); K1:K2 names a chain directly (default: all)")
    sweep.add_argument("--devices", type=_positive_int, default=2, metavar="D",
                       help="devices in the chain: the source and D-1 local workers (default: 2)")
    sweep.add_argument("--windows", default="1", metavar="W,...",
                       help="max batches in flight, a comma list; 1 = sequential (default: 1)")
    sweep.add_argument("--batch-sizes", default="8", metavar="B,...", help="images per batch, a comma list (default: 8)")
    sweep.add_argument("--repeats", default="1", metavar="R|auto",
                       help="runs per configuration, or auto: repeat until the 95%% CI of latency and throughput "
                            "is within --repeats-target of the mean (default: 1)")
    sweep.add_argument("--repeats-target", type=float, default=0.05, metavar="F",
                       help="auto: CI half-width as a fraction of the mean (default: 0.05)")
    sweep.add_argument("--min-repeats", type=int, default=3, metavar="N", help="auto: at least N runs (default: 3)")
    sweep.add_argument("--max-repeats", type=int, default=10, metavar="N", help="auto: at most N runs (default: 10)")
    _add_session_args(sweep, single=False)
    sweep.add_argument("--batches", type=_positive_int, default=50, metavar="N", help="counted batches per run (default: 50)")
    sweep.add_argument("--out", required=True, metavar="DIR", help="folder for the result files (results/<sweep-id>)")
    sweep.add_argument("--sweep-id", metavar="ID", help="sweep id (default: the name of --out)")
    sweep.add_argument("--device", default="cpu", help="device for the workers: cpu or cuda[:N] (default: cpu)")
    sweep.add_argument("--network-label", default="none", metavar="LABEL", help="network condition name (default: none)")
    sweep.add_argument("--codec", "--codecs", dest="codec", default="none", metavar="LIST",
                       help="codec(s) at the split, comma-separated; every split runs with each "
                            "(e.g. none,fp16,int8; default: none)")
    sweep.add_argument("--budget", default=DEFAULT_BUDGET, metavar="DURATION|none",
                       help="do not start a sweep whose estimated duration (printed before the first run) is over "
                            f"this: 2h, 90m, 1h30m, 3600 (seconds) or none (default: {DEFAULT_BUDGET})")
    sweep.add_argument("--replay", metavar="I=PROFILE[,...]",
                       help="chain devices (0 = the source, 1.. the local workers) that replay a measured profile, "
                            "e.g. 0=pi4.json,1=server.json (docs/testbed.md, Replay)")
    sweep.add_argument("--replay-timing", choices=("median", "draw"), default="median",
                       help="for --replay: per-block median or a seeded draw (default: median)")
    sweep.add_argument("--replay-output", choices=("compute", "stored"), default="compute",
                       help="for --replay: compute and wait out the rest, or send stored outputs (default: compute)")
    sweep.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sweep.set_defaults(func=_cmd_sweep)
    _register_train(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = subparsers.add_parser(
        "train-digits", help="train a model on scikit-learn's bundled digits (offline) for fidelity runs",
        description="Train MODEL on the digits that scikit-learn ships (no download) and write its state_dict; "
                    "use it with --weights FILE --input digits --input-size PX so fidelity (top-1 agreement) is "
                    "measured on a model whose predictions vary.")
    train.add_argument("--model", required=True, metavar="M", help="model name (see `paretopipe models`)")
    train.add_argument("--out", required=True, metavar="FILE", help="state_dict file to write (never overwritten)")
    train.add_argument("--input-size", type=_positive_int, default=32, metavar="PX", help="input size (default: 32)")
    train.add_argument("--epochs", type=_positive_int, default=6, metavar="N", help="epochs (default: 6)")
    train.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    train.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from paretopipe.digits import train

    _setup_logging(False)
    out = train(args.model, args.out, input_size=args.input_size, epochs=args.epochs, seed=args.seed)
    print(f"{args.out}: {args.model} at {args.input_size} px, held-out top-1 accuracy {out['test_accuracy']:.3f} "
          f"on {out['test_images']} images ({out['train_s']:.0f} s)")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M", help="model name (see `paretopipe models`)")
    p.add_argument("--num-classes", type=_positive_int, default=10, metavar="C", help="classifier outputs (default: 10)")
    p.add_argument("--input-size", type=_positive_int, metavar="PX", help="input height/width (default: the model's, 224 or 299)")
    p.add_argument("--weights", metavar="FILE", help="state_dict checkpoint (default: seeded random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and synthetic inputs (default: 0)")
    p.add_argument("--backend", default="tcp", help=f"{_BACKEND_HELP} (default: tcp)")


def _add_rpc_args(p: argparse.ArgumentParser, *, master: bool = True) -> None:
    group = p.add_argument_group("rpc backend", "only with --backend rpc; see docs/rpc.md")
    if master:
        group.add_argument("--rpc-master", metavar="HOST[:PORT]",
                           help="where the workers reach this source's RPC store (sets MASTER_ADDR/MASTER_PORT; "
                                "default: this host's address towards stage 1 and a free port)")
    group.add_argument("--rpc-ifname", metavar="IFACE",
                       help="interface for TensorPipe and Gloo (sets TP_SOCKET_IFNAME/GLOO_SOCKET_IFNAME; "
                            "default: the interface holding this host's address)")


def _apply_rpc_args(args: argparse.Namespace) -> None:
    from paretopipe.transport.rpc_group import apply_cli_options

    apply_cli_options(backend=args.backend, master=getattr(args, "rpc_master", None), ifname=args.rpc_ifname)


def _add_session_args(p: argparse.ArgumentParser, *, single: bool = True) -> None:
    if single:  # a sweep takes lists instead (--batch-sizes, --windows)
        p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch (default: 8)")
        p.add_argument("--window", type=_positive_int, default=1, metavar="W", help="max batches in flight; 1 = sequential (default: 1)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="warm-up batches, not counted (default: 5)")
    p.add_argument("--min-batches", type=int, default=20, metavar="N", help="validity: minimum counted batches (default: 20)")
    p.add_argument("--min-duration", type=float, default=0.0, metavar="S", help="validity: minimum counted duration (default: 0)")
    p.add_argument("--input", default="synthetic", metavar="SPEC", help="synthetic | cifar10:PATH | folder:PATH (default: synthetic)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="torch intra-op threads per stage (default: torch's)")
    p.add_argument("--token-file", metavar="F", help="shared secret for the workers' token auth")
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="keep retrying to connect to the workers for S seconds, also while a worker says to "
                        "wait (too many connections pending from this address) (default: 60)")
    p.add_argument("--source-address", metavar="HOST",
                   help="connect to the workers from this local address of this host, e.g. on a host with several "
                        "(default: the system's choice)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="receive timeout (default: 60)")
    p.add_argument("--fidelity-batches", type=int, default=16, metavar="N",
                   help="compare the logits of the first N counted batches with the unsplit, uncoded model's "
                        "after the run (summary.fidelity; 0: off; default: 16)")
    p.add_argument("--reference-cache", metavar="DIR",
                   help="keep the unsplit model's reference logits in DIR and reuse them in later runs with the "
                        "same model, weights and inputs (default: none for run; OUT/_cache/reference for sweep)")
    _add_rpc_args(p)


def _check_backend(name: str) -> None:
    if name not in _backends():
        raise ConfigError(f"unknown --backend {name!r} (available: {', '.join(_backends())})")


def _network(arg: str | None) -> dict[str, Any]:
    if not arg:
        return {}
    text = arg
    if arg.startswith("@"):
        try:
            text = Path(arg[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --network-json file {arg[1:]}: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--network-json is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError("--network-json must be a JSON object with configured/measured/extra")
    return obj


def _add_replay_args(p: argparse.ArgumentParser, whose: str) -> None:
    group = p.add_argument_group("replay", "time a measured device instead of this host (docs/testbed.md, Replay)")
    group.add_argument("--replay", metavar="PROFILE",
                       help=f"{whose} take the time PROFILE (`paretopipe profile`) recorded for their blocks; "
                            "the result file names the profile and marks the run replayed")
    group.add_argument("--replay-timing", choices=("median", "draw"), default="median",
                       help="median: per-block median; draw: a seeded draw from the recorded spread (default: median)")
    group.add_argument("--replay-output", choices=("compute", "stored"), default="compute",
                       help="compute: compute for real, then wait out the rest of the profiled time; stored: send "
                            "outputs computed beforehand for the same inputs, for a device faster than this host "
                            "(default: compute)")


def _check_replay_args(args: argparse.Namespace) -> None:
    if args.replay is None and (args.replay_timing != "median" or args.replay_output != "compute"):
        raise ConfigError("--replay-timing and --replay-output need --replay PROFILE")


def _cmd_serve(args: argparse.Namespace) -> int:
    from paretopipe.runtime.worker import serve

    _setup_logging(args.verbose)
    _check_backend(args.backend)
    _apply_rpc_args(args)
    _check_replay_args(args)
    replay = None
    if args.replay is not None:  # a bad profile is an error before the worker listens
        from paretopipe.runtime.replay import ReplaySetting

        replay = ReplaySetting.from_options(args.replay, args.replay_timing, args.replay_output)
    serve(listen=args.listen, device=args.device, shards=args.shards, token_file=args.token_file,
          threads=args.threads, backend=args.backend, codecs=args.codec, replay=replay)
    return 0


def _run_config(args: argparse.Namespace, **over: Any) -> Any:
    from paretopipe.runtime.source import RunConfig

    fields: dict[str, Any] = {
        "model": args.model, "backend": args.backend, "batch_size": getattr(args, "batch_size", 8),
        "window": getattr(args, "window", 1), "warmup": args.warmup, "min_batches": args.min_batches, "min_duration_s": args.min_duration,
        "input": args.input, "num_classes": args.num_classes, "input_size": args.input_size,
        "weights": args.weights, "seed": args.seed, "threads": args.threads, "token_file": args.token_file,
        "connect_timeout_s": args.connect_timeout, "timeout_s": args.timeout, "source_address": args.source_address,
        "network_label": args.network_label, "sweep_id": args.sweep_id,
        "fidelity_batches": args.fidelity_batches, "reference_cache": args.reference_cache,
    }
    fields.update(over)
    return RunConfig(**fields)


def _cmd_run(args: argparse.Namespace) -> int:
    from paretopipe.runtime.source import RunFailed, run

    _setup_logging(args.verbose)
    _check_backend(args.backend)
    _apply_rpc_args(args)
    _check_replay_args(args)
    cfg = _run_config(
        args, splits=tuple(args.split), stages=tuple(s for s in args.stages.split(",") if s), out=Path(args.out),
        batches=args.batches if args.batches is not None else (None if args.duration is not None else 50),
        duration_s=args.duration, device=args.device, network=_network(args.network_json),
        repeat=args.repeat, run_id=args.run_id, check=args.check, codec=args.codec,
        replay=args.replay, replay_timing=args.replay_timing, replay_output=args.replay_output,
    )
    try:
        doc = run(cfg)
    except RunFailed as exc:
        print(f"paretopipe: error: run failed: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_summary(doc, cfg.out))
    return 0


def format_summary(doc: dict[str, Any], path: Path) -> str:
    s, v = doc["summary"], doc["validity"]
    lat = s["latency_s"]
    lines = [
        f"{doc['run_id']}: {doc['status']}, {v['counted_batches']} batches in {v['duration_s']:.2f} s"
        + ("" if v["valid"] else f" (NOT valid: min batches {v['min_batches']} met={v['min_batches_met']}, "
                                 f"min duration {v['min_duration_s']} s met={v['min_duration_met']})"),
    ]
    if s["throughput_img_s"] is not None:
        lines.append(f"  throughput {s['throughput_img_s']:.2f} img/s; latency mean {lat['mean'] * 1e3:.2f} ms, "
                     f"p50 {lat['p50'] * 1e3:.2f}, p90 {lat['p90'] * 1e3:.2f}, p99 {lat['p99'] * 1e3:.2f} ms per batch")
        lines.append("  compute per stage (ms): " + ", ".join(f"{c * 1e3:.2f}" for c in s["compute_s"]))
        lines.append("  hops (wire bytes / ratio / transfer ms / encode+decode ms): " + ", ".join(
            f"{h['bytes']:.0f} / {h.get('ratio') or 1:.2f}x / {h['transfer_s'] * 1e3:.3f} / "
            f"{((h.get('encode_s') or 0) + (h.get('decode_s') or 0)) * 1e3:.3f}" for h in s["hops"]))
        lines.append(f"  queue wait {s['queue_wait_s'] * 1e3:.2f} ms, prefetch stalls {s['prefetch_stalls']}")
    rep = doc.get("replay")
    if rep:
        lines.append("  REPLAYED: " + "; ".join(
            f"stage {st['index']} timed by {st['profile']['path']} ({st['profile'].get('device')} on "
            f"{st['profile'].get('host')}, {st['timing']}, {st['output']} output), {st['overruns'] or 0} overrun(s)"
            for st in rep["stages"]) + (f" -- {rep['note']}" if rep.get("note") else ""))
    if s.get("accuracy_top1") is not None:
        lines.append(f"  top-1 accuracy {s['accuracy_top1']:.4f}")
    fid = s.get("fidelity")
    if fid:
        agree = "n/a (degenerate model)" if fid["agreement_top1"] is None else f"{fid['agreement_top1']:.4f}"
        lines.append(f"  fidelity ({doc['config'].get('codec', 'none')}) vs unsplit uncoded model over {fid['images']} "
                     f"images: top-1 agreement {agree}, max |err| {fid['max_abs_error']:.3g}, "
                     f"rel L2 {fid['rel_l2_error']:.3g}")
    if doc.get("check"):
        c = doc["check"]
        lines.append(f"  check vs unsplit model: max |diff| {c['max_abs_diff']:.3g} over {c['batches']} batches: {'ok' if c['ok'] else 'MISMATCH'}")
    lines.append(f"  written to {path}")
    return "\n".join(lines)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from paretopipe.plan import parse_positive_list, parse_repeats
    from paretopipe.plan.estimate import parse_budget
    from paretopipe.runtime.sweep import SweepConfig, sweep

    _setup_logging(args.verbose)
    _check_backend(args.backend)
    _apply_rpc_args(args)
    if args.devices < 2:
        raise ConfigError(f"--devices must be at least 2 (a source and a worker), got {args.devices}")
    from paretopipe.codecs import parse_codec_list

    codecs = tuple(c.name for c in parse_codec_list(args.codec))
    template = _run_config(args, splits=(), stages=(), out=Path(), batches=args.batches, codec=codecs[0])
    cfg = SweepConfig(run=template, out=Path(args.out), splits=args.splits, devices=args.devices, codecs=codecs,
                      windows=parse_positive_list(args.windows, "--windows", "1,4"),
                      batch_sizes=parse_positive_list(args.batch_sizes, "--batch-sizes", "1,8"),
                      repeats=parse_repeats(args.repeats, target=args.repeats_target, minimum=args.min_repeats,
                                            maximum=args.max_repeats, flag="--repeats"),
                      sweep_id=args.sweep_id, device=args.device, budget_s=parse_budget(args.budget, "--budget"),
                      replay=_sweep_replay(args, args.devices))
    return sweep(cfg)


def _sweep_replay(args: argparse.Namespace, devices: int) -> tuple[dict[str, str], ...]:
    """``sweep --replay 0=a.json,2=b.json``: per chain device 0..devices-1, what it replays."""
    if args.replay is None:
        if args.replay_timing != "median" or args.replay_output != "compute":
            raise ConfigError("--replay-timing and --replay-output need --replay INDEX=PROFILE")
        return ()
    from paretopipe.runtime.replay import parse_replay_map

    chosen = parse_replay_map(args.replay, example="0=pi4.json,1=server.json")
    bad = [k for k in chosen if not k.isdigit() or int(k) >= devices]
    if bad:
        raise ConfigError(f"--replay: no device {bad[0]} in a chain of {devices} (devices 0..{devices - 1}, 0 is "
                          "the source)")
    return tuple({"profile": chosen[str(i)], "timing": args.replay_timing, "output": args.replay_output}
                 if str(i) in chosen else {} for i in range(devices))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
