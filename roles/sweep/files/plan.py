#!/usr/bin/env python3
"""Plan a sweep on the controller: which runs exist, which are done, what each round runs.

Reads the sweep settings as JSON on stdin (see roles/sweep/tasks/plan.yml) and prints the plan
as JSON: the split points covered, counts, and one round per network condition that still has
runs to do. A run is done when ``<results_dir>/<run_id>.json`` exists on the controller with
status "ok"; a finished sweep therefore plans no rounds, and a half-done one plans only what is
missing (resume).

With ``splits_by_condition`` (``{condition: "0,31,32"}``, from ``paretopipe predict --select``
when ``strategy=predicted``) a condition runs only those of its split points; ``full_total`` says
how many runs every split would have taken.

Split points: ``all`` is every point 0..N of the model; ``0,4,9`` names points. A chain of D
devices runs D-1 split points per run: for three devices, every non-decreasing pair of the named
points (``3:9`` names one pair directly). Run ids are paretopipe's own
(``paretopipe.results.run_id``), so a file name says model, splits, backend, condition, batch,
window and repeat.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any


class PlanError(Exception):
    pass


def _split_points(model: str, num_classes: int) -> int:
    from paretopipe.splitting import num_blocks

    return num_blocks(model, num_classes=num_classes)


def parse_splits(text: Any, n_blocks: int, hops: int) -> list[tuple[int, ...]]:
    """``all`` / ``"0,4,9"`` / ``[0, 4, 9]`` / ``"3:9,4:12"`` -> sorted tuples of ``hops`` points."""
    if isinstance(text, (list, tuple)):
        items = [str(x) for x in text]
    else:
        items = [p.strip() for p in str(text).split(",") if p.strip()]
    if not items:
        raise PlanError("splits is empty; use 'all' or a comma list such as 0,4,9")
    points: set[int] = set()
    explicit: set[tuple[int, ...]] = set()
    for item in items:
        if item == "all":
            points.update(range(n_blocks + 1))
            continue
        try:
            values = tuple(int(v) for v in item.split(":"))
        except ValueError:
            raise PlanError(f"split {item!r} is not a number (or K1:K2 pair); use 'all' or e.g. 0,4,9") from None
        for k in values:
            if not 0 <= k <= n_blocks:
                raise PlanError(f"split {k} is out of range (valid: 0..{n_blocks}); see `paretopipe splits MODEL`")
        if len(values) == 1:
            points.add(values[0])
        elif len(values) == hops:
            if list(values) != sorted(values):
                raise PlanError(f"split {item!r} must be non-decreasing")
            explicit.add(values)
        else:
            raise PlanError(f"split {item!r} has {len(values)} points but a chain of {hops + 1} devices needs {hops}")
    combos = set(itertools.combinations_with_replacement(sorted(points), hops)) | explicit
    return sorted(combos)


def _done(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get("status") == "ok"
    except (OSError, ValueError):
        return False


def plan(s: dict[str, Any]) -> dict[str, Any]:
    from paretopipe.results import run_id as make_run_id

    chain = [{"name": n, "ip": ip} for n, ip in zip(s["chain"], s["chain_ips"])]
    if len(chain) < 2:
        raise PlanError(f"the chain needs at least two devices (a source and a worker), got {len(chain)}; "
                        "check the inventory or -e chain=...")
    hops = len(chain) - 1
    # The shards' manifest already says how many blocks the model has; without it, ask paretopipe
    # (which imports torch and traces the model: seconds on a small controller).
    n_blocks = int(s.get("num_blocks") or 0) or _split_points(s["model"], int(s["num_classes"]))
    combos = parse_splits(s["splits"], n_blocks, hops)
    backends = list(s["backends"])
    conditions = list(s["conditions"])
    if not backends or not conditions:
        raise PlanError("give at least one backend and one condition")
    results = Path(s["results_dir"])
    device_dir = s["device_results_dir"]
    # strategy=predicted: per condition, only the splits `paretopipe predict --select` chose
    # (within the ones asked for); other conditions keep every split.
    by_condition = s.get("splits_by_condition") or {}
    total = done = 0
    rounds = []
    for cond in conditions:
        runs = []
        cond_combos = combos
        if cond in by_condition:
            chosen = set(parse_splits(by_condition[cond], n_blocks, hops))
            cond_combos = [c for c in combos if c in chosen]
        for combo, backend, repeat in itertools.product(cond_combos, backends, range(int(s["repeats"]))):
            total += 1
            rid = make_run_id(model=s["model"], splits=combo, backend=backend, network=cond,
                              batch_size=int(s["batch_size"]), window=int(s["window"]), repeat=repeat)
            if _done(results / f"{rid}.json"):
                done += 1
                continue
            port = int(s["worker_port_base"]) + backends.index(backend)
            runs.append({
                "model": s["model"], "splits": list(combo),
                "stages": [f"{dev['ip']}:{port}" for dev in chain[1:]],
                "out": f"{device_dir}/{rid}.json", "run_id": rid, "sweep_id": s["sweep_id"],
                "repeat": repeat, "backend": backend, "network_label": cond,
                "batch_size": int(s["batch_size"]), "window": int(s["window"]), "warmup": int(s["warmup"]),
                "batches": None if s.get("duration") else int(s["batches"]),
                "duration_s": float(s["duration"]) if s.get("duration") else None,
                "min_batches": int(s["min_batches"]), "min_duration_s": float(s["min_duration"]),
                "input": s["input"], "num_classes": int(s["num_classes"]),
                "input_size": int(s["input_size"]) if s.get("input_size") else None,
                "seed": int(s["seed"]), "device": s["source_device"],
                "threads": int(s["source_threads"]) if int(s["source_threads"] or 0) > 0 else None,
                "connect_timeout_s": float(s["connect_timeout"]), "timeout_s": float(s["receive_timeout"]),
            })
        if runs:
            rounds.append({"condition": cond, "runs": runs})
    return {
        "sweep_id": s["sweep_id"], "model": s["model"], "num_blocks": n_blocks,
        "splits": [list(c) for c in combos], "chain": [d["name"] for d in chain],
        "total": total, "done": done, "pending": total - done, "rounds": rounds,
        "full_total": len(combos) * len(backends) * len(conditions) * int(s["repeats"]),
    }


def main() -> int:
    try:
        settings = json.load(sys.stdin)
        print(json.dumps(plan(settings)))
    except PlanError as exc:
        print(f"sweep plan: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a paretopipe error (unknown model, ...): one line, no traceback
        print(f"sweep plan: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
