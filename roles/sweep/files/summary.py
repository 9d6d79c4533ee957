#!/usr/bin/env python3
"""Summarise a sweep on the controller: runs done and failed, and where the wall time went.

Reads JSON on stdin: ``{"sweep_id", "results_dir", "started": <epoch s>, "plan": {...},
"reports": [<`python -m paretopipe.plan run` report>, ...], "conditions": [{"condition", "configured", "measured",
"ok"}, ...]}``. Writes ``<results_dir>/sweep-summary.yml`` (YAML, so result-file readers that
take every ``*.json`` do not mistake it for a run) and prints the same figures as text.

Time outside measured runs = sweep wall time - the sum of the runs' measured (counted-batch)
durations; it covers the testbed, provisioning, shaping and its check, worker start-up, each
run's set-up and warm-up, and fetching results. Its share of the wall time is compared with the
25% bound the project sets for a full sweep.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from paretoio.files import write_atomic  # runs with sweep_python, which has the package

BOUND = 0.25


def summarise(s: dict) -> dict:
    wall = max(time.time() - float(s["started"]), 1e-9)
    runs = [r for rep in s["reports"] for r in rep.get("runs", [])]
    count = {k: sum(r["status"] == k for r in runs) for k in ("ok", "failed", "error", "skipped")}
    measured = sum(float(r.get("measured_s") or 0.0) for r in runs if r["status"] == "ok")
    sessions = sum(float(r.get("wall_s") or 0.0) for r in runs if r["status"] in ("ok", "failed"))
    outside = wall - measured
    plan = s["plan"]
    return {
        "sweep_id": s["sweep_id"],
        "results_dir": s["results_dir"],
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": {"planned": plan["total"], "done_before": plan["done"], "ran": count["ok"] + count["failed"],
                 **count},
        "failed_runs": [{"run_id": r["run_id"], "error": r["error"], "file": r.get("file")}
                        for r in runs if r["status"] in ("failed", "error")],
        "time_s": {
            "wall": round(wall, 3),
            "measured_runs": round(measured, 3),
            "run_sessions": round(sessions, 3),
            "outside_measured": round(outside, 3),
            "in_runs_outside_measured": round(sessions - measured, 3),
            "outside_runs": round(wall - sessions, 3),
        },
        "overhead": {
            "fraction_outside_measured": round(outside / wall, 4),
            "bound": BOUND,
            "ratio_to_bound": round(outside / wall / BOUND, 3),
        },
        "conditions": s.get("conditions", []),
    }


def text(doc: dict) -> str:
    r, t, o = doc["runs"], doc["time_s"], doc["overhead"]
    lines = [
        f"sweep {doc['sweep_id']}: {r['ran']} run(s) this time ({r['ok']} ok, {r['failed']} failed, "
        f"{r['error']} not started), {r['done_before']} of {r['planned']} already done before",
        f"wall {t['wall']:.1f} s, measured runs {t['measured_runs']:.1f} s, outside measured runs "
        f"{t['outside_measured']:.1f} s = {o['fraction_outside_measured']:.1%} "
        f"(bound {o['bound']:.0%}, ratio {o['ratio_to_bound']:.2f}); of it {t['in_runs_outside_measured']:.1f} s "
        f"inside run sessions (set-up, warm-up), {t['outside_runs']:.1f} s between runs",
    ]
    for c in doc["conditions"]:
        lines.append(f"condition {c.get('condition')}: configured {c.get('configured')}, "
                     f"measured {c.get('measured')}, ok={c.get('ok')}")
    for f in doc["failed_runs"]:
        lines.append(f"FAILED {f['run_id']}: {f['error']}")
    return "\n".join(lines)


def main() -> int:
    s = json.load(sys.stdin)
    doc = summarise(s)
    out = Path(s["results_dir"]) / "sweep-summary.yml"
    write_atomic(out, yaml.safe_dump(doc, sort_keys=False))
    print(text(doc))
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
