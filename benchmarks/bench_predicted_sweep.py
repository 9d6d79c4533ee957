"""Predicted sweep against full sweep on the emulated testbed (issue 8's goal; needs root).

Brings up a private two-device testbed (prefix ``i8x-``, 10.88.0.0/24, state under ``--out``), then,
for every condition:

* **predicted** sweep: ``paretopipe profile`` on each device (once, for all conditions), then
  ``paretopipe predict --select`` per condition, then only the selected splits are run;
* **full** sweep: every split is run.

Runs are real: a ``paretopipe stage serve`` worker in pi2's namespace and cgroup, and one
``paretopipe run`` source process per run in pi1's, as the Ansible suite does (minus SSH).
It then prints, per condition, the measured frontier of the full sweep and the share of it that
the prediction selected (recall), the MAPE of predicted latency and throughput against the full
sweep's measurements, and the two sweeps' wall times, with the ratio of each figure to its goal
(recall >= 0.9, MAPE <= 15%, wall time cut >= 3x). Always tears the testbed down.

    sudo .venv/bin/python benchmarks/bench_predicted_sweep.py --out /tmp/bench8
    .venv/bin/python benchmarks/bench_predicted_sweep.py --overhead      # loopback, no root

``--overhead`` measures the TCP backend's per-message overhead on loopback (the value in
``paretopipe.predict.BACKEND_OVERHEAD_S``): a resnet18 session at k = N (everything on the
source, the logits cross twice), per batch (latency - sum of stage computes) / 2 hops; median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _testbed_common import PY, Devices, raise_on_signals, stop, topology_text, two_pis  # noqa: E402

WORKER_IP = "10.88.0.12"
WORKER_PORT = 29581
GOALS = {"recall": 0.9, "mape_pct": 15.0, "speedup": 3.0}


def say(msg: str) -> None:
    print(msg, flush=True)


# --- per-message overhead on loopback ----------------------------------------------------------


def measure_overhead(backend: str, batches: int) -> int:
    from paretopipe.splitting import num_blocks

    n = num_blocks("resnet18")
    with tempfile.TemporaryDirectory(prefix="pp-ovh-") as tmp:
        cmd = [PY, "-m", "paretopipe", "sweep", "--model", "resnet18", "--input-size", "32", "--batch-size", "1",
               "--splits", str(n), "--threads", "1", "--batches", str(batches), "--warmup", "10",
               "--repeats", "3", "--backend", backend, "--out", tmp]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        per_run = []
        for f in sorted(Path(tmp).glob("*.json")):
            doc = json.loads(f.read_text())
            values = [(b["latency_s"] - sum(b["compute_s"])) / len(b["hops"]) for b in doc["batches"]]
            per_run.append(statistics.median(values))
    say(f"{backend}: per-message overhead on loopback, median per batch of (latency - compute) / hops: "
        + ", ".join(f"{v * 1e3:.3f} ms" for v in per_run) + f" (3 runs x {batches} batches); "
        f"median {statistics.median(per_run) * 1e3:.3f} ms")
    return 0


# --- one sweep ---------------------------------------------------------------------------------


def run_splits(dev: Devices, args: argparse.Namespace, cond: str, splits: list[int], out: Path,
               network_json: str, logs: Path) -> dict[str, float]:
    """Run each split once (worker in pi2, source in pi1); returns per-run wall seconds."""
    out.mkdir(parents=True, exist_ok=True)
    worker = dev.popen("pi2", [PY, "-m", "paretopipe", "stage", "serve", "--listen", f"{WORKER_IP}:{WORKER_PORT}",
                               "--threads", "1"], logs / f"worker-{out.parent.name}-{cond}.log")
    took = {}
    try:
        for i, k in enumerate(splits, 1):
            path = out / f"{args.model}-s{k}-{cond}.json"
            cmd = [PY, "-m", "paretopipe", "run", "--model", args.model, "--input-size", str(args.input_size),
                   "--batch-size", str(args.batch_size), "--window", str(args.window), "--split", str(k),
                   "--stages", f"{WORKER_IP}:{WORKER_PORT}", "--batches", str(args.batches),
                   "--warmup", str(args.warmup), "--min-batches", str(args.batches), "--threads", "1",
                   "--network-label", cond, "--network-json", network_json, "--sweep-id",
                   f"{out.parent.name}-{cond}", "--timeout", "120", "--out", str(path)]
            t0 = time.monotonic()
            rc = dev.run("pi1", cmd, logs / f"{out.parent.name}-{cond}-s{k}.log", timeout=900)
            took[str(k)] = time.monotonic() - t0
            status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {logs})"
            extra = ""
            if rc == 0:
                s = json.loads(path.read_text())["summary"]
                extra = f", {s['throughput_img_s']:.2f} img/s, latency {s['latency_s']['mean'] * 1e3:.1f} ms"
            say(f"    [{i}/{len(splits)}] split {k}: {status}{extra} ({took[str(k)]:.1f} s)")
            if worker.poll() is not None:
                say("    worker died; restarting it")
                worker = dev.popen("pi2", [PY, "-m", "paretopipe", "stage", "serve", "--listen",
                                           f"{WORKER_IP}:{WORKER_PORT}", "--threads", "1"],
                                   logs / f"worker-{out.parent.name}-{cond}.log")
    finally:
        stop(worker)
    return took


def profile_devices(dev: Devices, args: argparse.Namespace, out: Path, logs: Path) -> list[Path]:
    """Profile pi1 and pi2: one after the other unless --parallel-profiles.

    Emulated devices are slices of one machine: they share its memory bus and last-level cache,
    and VGG16's classifier (400 MB of weights read per batch) is memory-bound, so two devices
    profiling at once each measure about twice the time either takes alone. Real devices do not
    share a memory bus, and Ansible profiles them in parallel."""
    out.mkdir(parents=True, exist_ok=True)
    paths, procs = [], []
    try:
        for name in ("pi1", "pi2"):
            path = out / f"profile-{name}.json"
            cmd = [PY, "-m", "paretopipe", "profile", args.model, "--input-size", str(args.input_size),
                   "--batch-size", str(args.batch_size), "--threads", "1", "--repeats", str(args.profile_repeats),
                   "--warmup", "3", "--out", str(path)]
            procs.append(dev.popen(name, cmd, logs / f"profile-{name}.log"))
            paths.append(path)
            if not args.parallel_profiles and procs[-1].wait(timeout=1800) != 0:
                raise SystemExit(f"profiling failed; see {logs}")
        for p in procs:
            if p.wait(timeout=1800) != 0:
                raise SystemExit(f"profiling failed; see {logs}")
    finally:
        for p in procs:
            stop(p)
    return paths


def predict(args: argparse.Namespace, profiles: list[Path], cond: str, out: Path) -> dict:
    cmd = [PY, "-m", "paretopipe", "predict", "--profiles", ",".join(map(str, profiles)), "--condition", cond,
           "--window", str(args.window), "--tolerance", str(args.tolerance), "--batches", str(args.batches),
           "--select", "--json",
           "--out", str(out)]
    if args.statistic:
        cmd += ["--statistic", args.statistic]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(res.stdout)


# --- evaluation --------------------------------------------------------------------------------


def evaluate(full_dir: Path, prediction: Path, selected_dir: Path) -> dict:
    from analysis.frames import aggregate, config_points, load_runs
    from analysis.predicted import compare, load_predictions, mape

    preds, bad = load_predictions([prediction])
    if bad or len(preds) != 1:
        raise SystemExit(f"cannot read {prediction}: {bad}")
    full = compare(preds, config_points(aggregate(load_runs([full_dir]))))[0]
    sel = compare(preds, config_points(aggregate(load_runs([selected_dir]))))[0]
    return {
        "splits_total": len(preds[0].predicted),
        "splits_measured_full": len(full.rows),
        "selected": sorted(k[0] for k in preds[0].selected),
        "predicted_frontier": sorted(k[0] for k in preds[0].frontier),
        "measured_frontier": [k[0] for k in full.measured_frontier],
        "found": [k[0] for k in full.found],
        "recall": full.recall,
        "latency_mape_pct": full.latency_mape,
        "throughput_mape_pct": full.throughput_mape,
        "latency_mape_selected_pct": mape(r.latency_error for r in full.rows if r.selected),
        "throughput_mape_selected_pct": mape(r.throughput_error for r in full.rows if r.selected),
        "smart_sweep_best": max(sel.rows, key=lambda r: r.measured_throughput).splits if sel.rows else None,
        "rows": [{"splits": r.splits, "pred_latency": r.predicted_latency, "meas_latency": r.measured_latency,
                  "pred_thr": r.predicted_throughput, "meas_thr": r.measured_throughput,
                  "measured_frontier": r.measured_frontier, "selected": r.selected} for r in full.rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead", action="store_true", help="only measure the backend's per-message overhead")
    parser.add_argument("--backend", default="tcp")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="counted batches per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-repeats", type=int, default=20)
    parser.add_argument("--profile", default="rpi5", help="device profile of pi1 and pi2 (profiles.yml)")
    parser.add_argument("--conditions", default="wifi,wan,congested")
    parser.add_argument("--tolerance", type=float, default=0.05, help="predict --tolerance")
    parser.add_argument("--statistic", default=None, help="predict --statistic (default: predict's)")
    parser.add_argument("--parallel-profiles", action="store_true",
                        help="profile pi1 and pi2 at the same time (see profile_devices)")
    parser.add_argument("--full-from", type=Path, metavar="DIR",
                        help="reuse the full sweep (results and wall time) of an earlier run's --out DIR "
                             "instead of measuring it again; the report says so")
    parser.add_argument("--splits", default="all", help="restrict both sweeps to these splits (debugging)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-predicted-sweep"))
    args = parser.parse_args()
    if args.overhead:
        return measure_overhead(args.backend, 200)
    if os.geteuid() != 0:
        print("needs root (network namespaces, tc, cgroups)", file=sys.stderr)
        return 2

    raise_on_signals()  # so that `finally` tears the testbed down

    from paretopipe import testbed as tb
    from paretopipe.netcond import load_conditions
    from paretopipe.splitting import num_blocks

    conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
    table = load_conditions()
    n = num_blocks(args.model)
    every = list(range(n + 1)) if args.splits == "all" else [int(k) for k in args.splits.split(",")]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    topo = out / "topology.yml"
    topo.write_text(topology_text("i8x", "10.88.0", two_pis(args.profile)))
    state = out / "testbed-state"
    say(f"{args.model} at {args.input_size} px, batch {args.batch_size}, window {args.window}, {len(every)} splits, "
        f"conditions {', '.join(conds)}; devices pi1, pi2 = {args.profile}; results in {out}")
    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "conditions": {}}
    try:
        tb.up(topo, state_dir=state, inventory=out / "hosts.yml")
        dev = Devices(topo)
        dev.raise_cpu_weight()

        # predicted sweep: profile once, then predict and measure the selection per condition
        t_pred0 = time.monotonic()
        say("predicted sweep: profiling pi1 and pi2 ...")
        profiles = profile_devices(dev, args, out / "predicted", logs)
        t_profile = time.monotonic() - t_pred0
        say(f"  profiled in {t_profile:.1f} s")
        selections = {}
        for cond in conds:
            c = table[cond]
            tb.shape(c, ["pi1", "pi2"], state_dir=state)
            net = json.dumps({"configured": {"delay_ms": c.delay_ms, "jitter_ms": c.jitter_ms,
                                             "loss_pct": c.loss_pct, "rate_mbit": c.rate_mbit}})
            sel = predict(args, profiles, cond, out / "predicted" / cond / "prediction.json")
            chosen = [s["splits"][0] for s in sel["selected"] if s["splits"][0] in every]
            selections[cond] = (chosen, net)
            say(f"  {cond}: predicted frontier {[f['splits'] for f in sel['frontier']]}; measuring {len(chosen)} of "
                f"{sel['total']}: {','.join(map(str, chosen))}")
            run_splits(dev, args, cond, chosen, out / "predicted" / cond, net, logs)
        t_pred = time.monotonic() - t_pred0

        # full sweep
        if args.full_from is not None:
            earlier = json.loads((args.full_from / "summary.json").read_text())
            t_full = float(earlier["wall_full_s"])
            for cond in conds:
                dst = out / "full" / cond
                dst.mkdir(parents=True, exist_ok=True)
                for f in (args.full_from / "full" / cond).glob(f"{args.model}-s*.json"):
                    (dst / f.name).write_text(f.read_text())
            say(f"full sweep: reused from {args.full_from} (measured there in {t_full:.0f} s)")
            summary["full_from"] = str(args.full_from)
        else:
            t_full0 = time.monotonic()
            for cond in conds:
                c = table[cond]
                tb.shape(c, ["pi1", "pi2"], state_dir=state)
                say(f"full sweep, {cond}: {len(every)} splits")
                run_splits(dev, args, cond, every, out / "full" / cond, selections[cond][1], logs)
            t_full = time.monotonic() - t_full0
    finally:
        try:
            tb.unshape(state_dir=state)
        finally:
            tb.down(state_dir=state)

    say("")
    say(f"{'condition':10} {'selected':>9} {'meas. frontier':>16} {'found':>12} {'recall':>7} "
        f"{'MAPE lat %':>10} {'MAPE thr %':>10} {'sel. lat %':>10} {'sel. thr %':>10}")
    worst = {"recall": 1.0, "lat": 0.0, "thr": 0.0}
    for cond in conds:
        ev = evaluate(out / "full" / cond, out / "predicted" / cond / "prediction.json", out / "predicted" / cond)
        summary["conditions"][cond] = ev
        fmt = lambda items: " ".join(",".join(map(str, s)) for s in items) or "-"  # noqa: E731
        say(f"{cond:10} {len(ev['selected']):>4} / {ev['splits_total']:<3} {fmt(ev['measured_frontier']):>16} "
            f"{fmt(ev['found']):>12} {ev['recall']:7.2f} {ev['latency_mape_pct']:10.1f} "
            f"{ev['throughput_mape_pct']:10.1f} {ev['latency_mape_selected_pct']:10.1f} "
            f"{ev['throughput_mape_selected_pct']:10.1f}")
        worst["recall"] = min(worst["recall"], ev["recall"])
        worst["lat"] = max(worst["lat"], ev["latency_mape_pct"])
        worst["thr"] = max(worst["thr"], ev["throughput_mape_pct"])
    speedup = t_full / t_pred
    summary.update(wall_full_s=t_full, wall_predicted_s=t_pred, wall_profile_s=t_profile, speedup=speedup,
                   worst=worst)
    say("")
    say(f"wall time: full sweep {t_full:.0f} s, predicted sweep {t_pred:.0f} s (profiling {t_profile:.0f} s of it): "
        f"{speedup:.2f}x faster")
    say(f"goals (ratio to goal, >= 1 meets it): recall {worst['recall']:.2f} / {GOALS['recall']} = "
        f"{worst['recall'] / GOALS['recall']:.2f}; latency MAPE {GOALS['mape_pct']} / {worst['lat']:.1f} = "
        f"{GOALS['mape_pct'] / max(worst['lat'], 1e-9):.2f}; throughput MAPE {GOALS['mape_pct']} / {worst['thr']:.1f} = "
        f"{GOALS['mape_pct'] / max(worst['thr'], 1e-9):.2f}; speed-up {speedup:.2f} / {GOALS['speedup']} = "
        f"{speedup / GOALS['speedup']:.2f}   (worst over conditions; MAPE over every split of the full sweep)")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    say(f"wrote {out / 'summary.json'}; analysis: python -m analysis.pareto {out / 'full'}")
    for cond in conds:  # the prediction next to the full sweep's results, for the analysis report
        (out / "full" / cond / "prediction.json").write_text((out / "predicted" / cond / "prediction.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
