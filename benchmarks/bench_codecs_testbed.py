"""Codecs on the emulated testbed at 5 Mbit/s: int8 against none on MobileNetV2 (issue 16's goal;
needs root).

Brings up a private two-device testbed (prefix ``c16-``, 10.77.16.0/24, state under ``--out``):
``edge`` (profile rpi4: half a core) runs the source, ``server`` (gpu-server: no CPU cap) runs a
``paretopipe stage serve`` worker, each in its namespace and cgroups as the Ansible suite starts
them (minus SSH). It caps the link at ``--rate-mbit`` (default 5) both ways, measures it with
``testbed check`` (recorded in every result's ``config.network``), then runs every split of
``--splits`` with every codec of ``--codecs`` (k = N, where only the logits cross, with ``none``
only) on MobileNetV2 trained on scikit-learn's digits (``--input digits``: predictions vary, so
top-1 agreement means something). It prints, per split, latency with each codec, the
none/int8 latency ratio and int8's top-1 agreement against the goal (ratio >= 3x on the early
splits, ``--early``; agreement >= 99%), then the frontier of latency, throughput and agreement
without codecs (codec none only) and with them, through analysis's public API
(``analysis.load_runs`` / ``aggregate`` / ``frontier``). Always tears the testbed down.

Prediction (unless ``--no-predict``): before the runs it profiles ``edge`` and ``server`` (one after
the other, each in its cgroups; ``paretopipe profile --codecs`` with the same weights, input size
and batch size), predicts every split with every codec for the configured link (``paretopipe
predict --codecs``, written to ``prediction.json``), and after the runs prints predicted against
measured latency per split and codec (``analysis.predicted.compare``) and the error per codec.

Weights: ``--weights FILE``, else a cache file under ``.cache/weights/`` (git-ignored), trained
with ``paretopipe train-digits`` on first use (about 5 minutes on 2 cores) and reused after.

    sudo .venv/bin/python benchmarks/bench_codecs_testbed.py [--weights FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _testbed_common import PY, REPO, Devices, raise_on_signals, stop, topology_text

PROFILE_REPEATS = 10

MODEL = "mobilenet_v2"
TOPOLOGY = topology_text("c16", "10.77.16", [("edge", "edge", "rpi4", 11), ("server", "servers", "gpu-server", 21)])
SERVER = "10.77.16.21:29616"
GOALS = {"ratio": 3.0, "agreement": 0.99}
OBJECTIVES = "latency:min,throughput:max,agreement:max"
CACHE = REPO / ".cache" / "weights"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def weights(args: argparse.Namespace) -> Path:
    """``--weights``, or the cached digits-trained weights (trained here on first use)."""
    if args.weights is not None:
        if not args.weights.is_file():
            raise SystemExit(f"--weights {args.weights}: no such file")
        return args.weights
    path = CACHE / f"{MODEL}-digits-{args.input_size}px-e{args.epochs}-s0.pt"
    if path.is_file():
        say(f"weights: {path} (cached)")
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.pt")
    say(f"weights: training {MODEL} on the digits at {args.input_size} px, {args.epochs} epochs "
        f"(cached in {path}) ...")
    t0 = time.monotonic()
    try:
        subprocess.run([PY, "-m", "paretopipe", "train-digits", "--model", MODEL, "--input-size",
                        str(args.input_size), "--epochs", str(args.epochs), "--out", str(tmp)],
                       check=True, cwd=REPO)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    say(f"  trained in {time.monotonic() - t0:.0f} s")
    return path


def run_all(dev: Devices, args: argparse.Namespace, plan: list[tuple[int, str]], w: Path,
            network: dict, out: Path, logs: Path) -> int:
    """Run each (split, codec) once, worker in ``server``, source in ``edge``; returns failures."""
    serve = [PY, "-m", "paretopipe", "stage", "serve", "--listen", SERVER, "--threads", "1"]
    worker = dev.popen("server", serve, logs / "worker.log")
    failures = 0
    try:
        for i, (k, codec) in enumerate(plan, 1):
            path = out / f"{MODEL}-s{k}-{codec}.json"
            cmd = [PY, "-m", "paretopipe", "run", "--model", MODEL, "--weights", str(w),
                   "--input", "digits", "--input-size", str(args.input_size),
                   "--batch-size", str(args.batch_size), "--window", str(args.window),
                   "--split", str(k), "--stages", SERVER, "--codec", codec,
                   "--batches", str(args.batches), "--warmup", str(args.warmup),
                   "--min-batches", str(args.batches), "--fidelity-batches", str(args.batches),
                   "--threads", "1", "--network-label", network["configured"]["name"],
                   "--network-json", json.dumps(network), "--sweep-id", "bench-codecs-testbed",
                   "--timeout", "120", "--out", str(path)]
            t0 = time.monotonic()
            rc = dev.run("edge", cmd, logs / f"s{k}-{codec}.log", timeout=600)
            if rc == 0:
                s = json.loads(path.read_text())["summary"]
                agree = (s.get("fidelity") or {}).get("agreement_top1")
                extra = (f"latency {s['latency_s']['mean'] * 1e3:.1f} ms, "
                         f"{s['throughput_img_s']:.2f} img/s, agreement "
                         f"{'n/a' if agree is None else format(agree, '.4f')}")
            else:
                failures += 1
                extra = f"FAILED (exit {rc}; see {logs})"
            say(f"  [{i}/{len(plan)}] k={k} {codec}: {extra} ({time.monotonic() - t0:.1f} s)")
            if worker.poll() is not None:
                say("  worker died; restarting it")
                worker = dev.popen("server", serve, logs / "worker.log")
    finally:
        stop(worker)
    return failures


def profile_and_predict(dev: Devices, args: argparse.Namespace, w: Path, label: str, out: Path,
                        logs: Path) -> Path:
    """Profile edge, then server (never both at once: they share this machine), and predict every
    split with every codec of ``--codecs`` on the configured link; returns the prediction file."""
    paths = []
    for name in ("edge", "server"):
        path = out / f"profile-{name}.json"
        cmd = [PY, "-m", "paretopipe", "profile", MODEL, "--weights", str(w), "--input-size", str(args.input_size),
               "--batch-size", str(args.batch_size), "--threads", "1", "--repeats", str(PROFILE_REPEATS),
               "--codecs", args.codecs, "--out", str(path)]
        proc = dev.popen(name, cmd, logs / f"profile-{name}.log")
        try:
            if proc.wait(timeout=900) != 0:
                raise SystemExit(f"profiling {name} failed; see {logs}")
        finally:
            stop(proc)
        paths.append(path)
    prediction = out / "prediction.json"
    subprocess.run([PY, "-m", "paretopipe", "predict", "--profiles", ",".join(map(str, paths)),
                    "--delay", f"{args.delay_ms:g}ms", "--rate", f"{args.rate_mbit:g}mbit", "--network-label", label,
                    "--window", str(args.window), "--batches", str(args.batches), "--codecs", args.codecs,
                    "--out", str(prediction)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    say(f"profiled edge and server, predicted {prediction}")
    return prediction


def report_prediction(prediction: Path, results: Path) -> dict:
    """Predicted against measured latency per split and codec, and the error per codec."""
    sys.path.insert(0, str(REPO))
    from analysis import aggregate, load_runs
    from analysis.frames import config_points
    from analysis.predicted import compare, load_predictions, mape

    preds, bad = load_predictions([prediction])
    if bad or not preds:
        raise SystemExit(f"cannot read {prediction}: {bad}")
    [c] = compare(preds, config_points(aggregate(load_runs(results))))
    say()
    say("predicted against measured latency per batch [ms] (paretopipe predict --codecs)")
    say(f"{'configuration':>18} {'predicted':>10} {'measured':>10} {'error':>8}")
    for r in c.rows:
        say(f"{r.label:>18} {r.predicted_latency * 1e3:10.1f} {r.measured_latency * 1e3:10.1f} "
            f"{100 * r.latency_error:+7.1f}%")
    per_codec = {}
    for codec in sorted({r.key[3] for r in c.rows}):
        per_codec[codec] = mape(r.latency_error for r in c.rows if r.key[3] == codec)
    say("latency MAPE per codec: " + ", ".join(f"{k} {v:.1f}%" for k, v in per_codec.items())
        + f"; all {c.latency_mape:.1f}% over {len(c.rows)} configurations")
    # what the codec changes, apart from the compute both share: latency(none) - latency(codec)
    rows = {(r.splits, r.key[3]): r for r in c.rows}
    saving = {}
    for (ks, codec), r in sorted(rows.items()):
        none = rows.get((ks, "none"))
        if codec == "none" or none is None:
            continue
        pred, meas = none.predicted_latency - r.predicted_latency, none.measured_latency - r.measured_latency
        saving[f"k={','.join(map(str, ks))} {codec}"] = {"predicted_s": pred, "measured_s": meas}
        error = f"{100 * (pred - meas) / meas:+.1f}%" if meas else "n/a"
        say(f"  k={','.join(map(str, ks))} {codec}: saves {meas * 1e3:.1f} ms against none, predicted "
            f"{pred * 1e3:.1f} ms ({error})")
    return {"latency_mape_pct": c.latency_mape, "latency_mape_per_codec_pct": per_codec, "saving": saving,
            "rows": [{"config": r.label, "predicted_latency_s": r.predicted_latency,
                      "measured_latency_s": r.measured_latency} for r in c.rows]}


def report(args: argparse.Namespace, out: Path, early: list[int]) -> dict:
    """Per-split table, the goal's ratios, and the frontiers without and with codecs."""
    sys.path.insert(0, str(REPO))
    from analysis import aggregate, frontier, load_runs

    runs = load_runs(out)
    if runs.empty:
        raise SystemExit(f"no usable result files in {out}: {runs.attrs['skipped'].to_dict('records')}")
    configs = aggregate(runs).copy()  # one block: adding a column to the wide table warns otherwise
    configs = configs.assign(k=configs["splits"].map(lambda s: s[0]))
    codecs = [c for c in args.codecs.split(",") if c in set(configs["codec"])]
    cell = {(int(r.k), r.codec): r for r in configs.itertuples()}
    say()
    say("latency per batch [ms] (agreement with the unsplit, uncoded model; compression ratio at "
        "the split)")
    say(f"{'k':>3} " + " ".join(f"{c:>24}" for c in codecs) + f" {'none/int8':>10}")
    summary: dict = {"splits": {}, "goals": GOALS}
    for k in sorted({k for k, _ in cell}):
        cols = []
        for c in codecs:
            r = cell.get((k, c))
            cols.append(f"{'-':>24}" if r is None else
                        f"{r.latency_mean * 1e3:8.1f} ({r.agreement_mean:.3f}, "
                        f"{r.compression_ratio_mean:4.2f}x)".rjust(24))
        none, int8 = cell.get((k, "none")), cell.get((k, "int8"))
        ratio = none.latency_mean / int8.latency_mean if none is not None and int8 is not None else None
        say(f"{k:>3} " + " ".join(cols) + (f" {ratio:10.2f}" if ratio else f" {'-':>10}")
            + ("   (early)" if k in early else ""))
        summary["splits"][k] = {c: {"latency_s": cell[(k, c)].latency_mean,
                                    "throughput_img_s": cell[(k, c)].throughput_mean,
                                    "agreement": cell[(k, c)].agreement_mean,
                                    "split_bytes": cell[(k, c)].split_bytes_mean,
                                    "compression_ratio": cell[(k, c)].compression_ratio_mean}
                                for c in codecs if (k, c) in cell} | {"none_over_int8": ratio}
    judged = [(k, summary["splits"][k]) for k in early if k in summary["splits"]]
    ratios = [s["none_over_int8"] for _, s in judged if s["none_over_int8"] is not None]
    agrees = [s["int8"]["agreement"] for _, s in judged if "int8" in s]
    worst_ratio = min(ratios) if ratios else float("nan")
    worst_agree = min(agrees) if agrees else float("nan")
    summary |= {"worst_early_ratio": worst_ratio, "worst_early_int8_agreement": worst_agree}
    say()
    say(f"goal, early splits {','.join(map(str, early))}: latency none/int8 worst {worst_ratio:.2f}x "
        f"(goal >= {GOALS['ratio']}x: ratio to goal {worst_ratio / GOALS['ratio']:.2f}); int8 "
        f"top-1 agreement worst {worst_agree:.4f} (goal >= {GOALS['agreement']}: ratio to goal "
        f"{worst_agree / GOALS['agreement']:.3f})")

    say()
    say(f"frontier of {OBJECTIVES} (k = split; one group: {MODEL}, {runs['network'].iloc[0]}, tcp)")
    cols = ["label", "latency_mean", "throughput_mean", "agreement_mean"]
    sides = {}
    for name, subset in (("without codecs (none only)", configs[configs["codec"] == "none"]),
                         ("with codecs (" + ",".join(codecs) + ")", configs)):
        front = frontier(subset, OBJECTIVES)
        front = front[front["on_frontier"]].sort_values("latency_mean")
        rows = [f"k={','.join(map(str, r.splits))} {r.codec}: {r.latency_mean * 1e3:.1f} ms, {r.throughput_mean:.2f} img/s, "
                f"agreement {r.agreement_mean:.4f}" for r in front.itertuples()]
        sides[name] = rows
        summary.setdefault("frontiers", {})[name] = front[[*cols, "codec"]].to_dict("records")
    width = max(len(r) for rows in sides.values() for r in rows) + 2
    names = list(sides)
    say(f"  {names[0]:{width}}| {names[1]}")
    for i in range(max(len(v) for v in sides.values())):
        left = sides[names[0]][i] if i < len(sides[names[0]]) else ""
        right = sides[names[1]][i] if i < len(sides[names[1]]) else ""
        say(f"  {left:{width}}| {right}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="digits-trained state_dict (default: cached, "
                        "trained on first use)")
    parser.add_argument("--epochs", type=int, default=6, help="train-digits epochs when training")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--batches", type=int, default=16,
                        help="counted batches per run; fidelity is compared over all of them")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--splits", default="0,1,2,3,6,23", help="splits to run (23 = N: all on edge)")
    parser.add_argument("--early", default="0,1,2,3",
                        help="the early splits the goal is judged on (default: up to features.2, "
                             "where 6-32 KiB per image cross at 32 px; `paretopipe splits`)")
    parser.add_argument("--codecs", default="none,fp16,int8")
    parser.add_argument("--rate-mbit", type=float, default=5.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay (0: rate only)")
    parser.add_argument("--no-predict", action="store_true", help="skip profiling and prediction")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-codecs-testbed"))
    parser.add_argument("--report-only", action="store_true",
                        help="only print the report of an earlier run's --out results")
    args = parser.parse_args()
    splits = [int(k) for k in args.splits.split(",")]
    early = [int(k) for k in args.early.split(",")]
    out = args.out.resolve()
    results = out / "results"
    if args.report_only:
        report(args, results, early)
        if (out / "prediction.json").is_file():
            report_prediction(out / "prediction.json", results)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces, tc, cgroups)", file=sys.stderr)
        return 2
    if "int8" not in args.codecs.split(",") or "none" not in args.codecs.split(","):
        raise SystemExit("--codecs must include none and int8 (the goal compares them)")
    if results.exists() and any(results.iterdir()):
        raise SystemExit(f"{results} holds results of an earlier run: use another --out "
                         f"(or --report-only to print them)")

    raise_on_signals()  # so that `finally` tears the testbed down

    from paretopipe import testbed as tb
    from paretopipe.netcond import Condition
    from paretopipe.splitting import num_blocks

    n = num_blocks(MODEL)
    if any(not 0 <= k <= n for k in splits):
        raise SystemExit(f"--splits: {MODEL} has splits 0..{n}")
    w = weights(args)
    plan = [(k, c) for k in splits for c in args.codecs.split(",") if k < n or c == "none"]
    logs = out / "logs"
    for d in (results, logs):
        d.mkdir(parents=True, exist_ok=True)
    topo = out / "topology.yml"
    topo.write_text(TOPOLOGY)
    state = out / "testbed-state"
    cond = Condition(f"{args.rate_mbit:g}mbit", delay_ms=args.delay_ms, rate_mbit=args.rate_mbit)
    say(f"{MODEL} at {args.input_size} px, batch {args.batch_size}, window {args.window}, "
        f"{args.batches} batches (+{args.warmup} warm-up); splits {args.splits}; codecs "
        f"{args.codecs}; edge = rpi4, server = gpu-server; {cond.name} "
        f"(delay {args.delay_ms:g} ms); results in {results}")
    t0 = time.monotonic()
    prediction = None
    try:
        tb.up(topo, state_dir=state, inventory=out / "hosts.yml")
        dev = Devices(topo)
        dev.raise_cpu_weight()
        tb.shape(cond, ["edge", "server"], state_dir=state)
        checked = tb.check(["edge", "server"], state_dir=state)
        network = {"configured": checked["configured"], "measured": checked["measured"],
                   "extra": {k: checked[k] for k in ("pair", "method", "checks", "ok")}}
        say(f"link: configured {args.rate_mbit:g} Mbit/s, measured "
            f"{network['measured']['rate_mbit']:.2f} Mbit/s, RTT {network['measured']['rtt_ms']:.2f} ms "
            f"({'ok' if checked['ok'] else 'OUT OF TOLERANCE'})")
        if not args.no_predict:
            prediction = profile_and_predict(dev, args, w, network["configured"]["name"], out, logs)
        failures = run_all(dev, args, plan, w, network, results, logs)
    finally:
        try:
            tb.unshape(state_dir=state)
        finally:
            tb.down(state_dir=state)
    say(f"{len(plan)} runs in {time.monotonic() - t0:.0f} s, {failures} failed; testbed down")
    summary = report(args, results, early)
    if prediction is not None:
        summary["prediction"] = report_prediction(prediction, results)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    say(f"wrote {out / 'summary.json'}; report: python -m analysis.pareto {results} "
        f"--objectives {OBJECTIVES}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
