"""Replay devices (issue 24): scale and stability on loopback, with real worker processes.

- **scale**: an N-device chain (default 8) of MobileNetV2 where every device replays a profile
  and sends stored outputs, so no stage computes for real. Goal: the measured throughput of a
  pipelined run is at least 0.9 of the predicted pipelined throughput, batch / (slowest stage's
  profiled time) -- with replay, the host's cores are not the limit.
- **stability**: the run-to-run coefficient of variation of mean latency of one configuration,
  replayed (every device, stored output) against plain (the same chain computing for real).
  Goal: <= 2% under replay; both are printed.

The profile is measured here first (`paretopipe profile`, at a small input size so the whole
benchmark stays within a few minutes), then scaled by --scale so that the replayed devices are
slower than this host (a replayed device must be slower than the host for "compute" output; with
"stored" output no stage computes at all).

Not done here: faithfulness (profile emulated testbed devices, replay them on a second testbed,
per-configuration medians within 5%) -- that needs the root-only emulated testbed.

    python benchmarks/bench_replay.py [--devices 8] [--repeats 3] [--batches 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runtime_common import local_worker  # noqa: E402

MODEL, BATCH, PX = "mobilenet_v2", 2, 64


def _profile(out: Path, scale: float) -> Path:
    from paretopipe.profiling import ProfileConfig, profile_model

    doc = profile_model(ProfileConfig(MODEL, batch_size=BATCH, input_size=PX, repeats=5, warmup=2, threads=1,
                                      codecs=("none",), codec_repeats=1))
    for block in doc["blocks"]:
        block["compute_s"] = {k: v * scale for k, v in block["compute_s"].items()}
    path = out / "profile.json"
    path.write_text(json.dumps(doc))
    return path


def _even_splits(num_blocks: int, devices: int) -> tuple[int, ...]:
    return tuple(round(num_blocks * i / devices) for i in range(1, devices))


def _runs(out: Path, name: str, *, splits: tuple[int, ...], profile: Path | None, window: int, batches: int,
          repeats: int) -> list[dict]:
    from paretopipe.runtime.source import RunConfig, run

    replay = ("--replay", str(profile), "--replay-output", "stored") if profile else ()
    docs = []
    with ExitStack() as stack:
        stages = tuple(stack.enter_context(local_worker(*replay)) for _ in splits)
        for r in range(repeats):
            cfg = RunConfig(model=MODEL, splits=splits, stages=stages, out=out / f"{name}-{r}.json", batch_size=BATCH,
                            input_size=PX, window=window, batches=batches, warmup=3, min_batches=1, threads=1,
                            replay=str(profile) if profile else None, replay_output="stored",
                            reference_cache=str(out / "cache"), fidelity_batches=0, timeout_s=120)
            docs.append(run(cfg))
    return docs


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=8, help="chain length for the scale check (default: 8)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (default: 3)")
    ap.add_argument("--batches", type=int, default=30, help="counted batches per run (default: 30)")
    ap.add_argument("--scale", type=float, default=4.0, help="profiled times x this (default: 4)")
    args = ap.parse_args()
    from paretopipe.splitting import num_blocks

    n = num_blocks(MODEL, num_classes=10)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        out = Path(tmp)
        profile = _profile(out, args.scale)
        prof = json.loads(profile.read_text())
        medians = [b["compute_s"]["median"] for b in prof["blocks"]]

        # scale: every device replays, stored output, pipelined
        splits = _even_splits(n, args.devices)
        bounds = (0, *splits, n)
        stage_s = [sum(medians[a:b]) for a, b in zip(bounds, bounds[1:])]
        predicted = BATCH / max(stage_s)
        docs = _runs(out, "scale", splits=splits, profile=profile, window=args.devices, batches=args.batches,
                     repeats=args.repeats)
        tput = [d["summary"]["throughput_img_s"] for d in docs]
        over = [d["replay"]["overruns"] for d in docs]
        ratio = statistics.median(tput) / predicted
        print(f"scale: {MODEL} {PX}px b{BATCH}, {args.devices} replayed devices (stored output), window "
              f"{args.devices}, splits {list(splits)}; slowest stage {max(stage_s) * 1e3:.2f} ms -> predicted "
              f"{predicted:.1f} img/s; measured median {statistics.median(tput):.1f} img/s (runs: "
              f"{', '.join(f'{t:.1f}' for t in tput)}), overruns {over}; ratio {ratio:.3f} (goal >= 0.9)")

        # stability: one 3-device configuration, window 1, replayed vs plain
        splits3 = _even_splits(n, 3)
        rep = _runs(out, "stab-replay", splits=splits3, profile=profile, window=1, batches=args.batches,
                    repeats=args.repeats)
        plain = _runs(out, "stab-plain", splits=splits3, profile=None, window=1, batches=args.batches,
                      repeats=args.repeats)
        for label, ds in (("replay", rep), ("plain", plain)):
            lat = [d["summary"]["latency_s"]["mean"] for d in ds]
            print(f"stability ({label}): 3 devices, splits {list(splits3)}, w1: mean latency per run "
                  f"{', '.join(f'{x * 1e3:.2f}' for x in lat)} ms; CV {_cv(lat):.2%}"
                  + (" (goal <= 2%)" if label == "replay" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
