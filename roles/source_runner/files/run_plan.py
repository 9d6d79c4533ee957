#!/usr/bin/env python3
"""Run a list of split-inference runs from one process on the source device.

``run_plan.py [--log FILE] [--bundle FILE.tar.gz] < plan.json``. Reads a plan (JSON) on stdin: ``{"runs": [{...RunConfig fields...}, ...]}``. Each run is one
``paretopipe run`` session, executed in this process so that Python, torch and the model code
are loaded once for the whole list rather than once per run (the Ansible loop's overhead is then
a few tasks per network condition, not per run).

- A run whose result file already exists with status "ok" is skipped (resume).
- A run that fails writes its partial result file (status "failed"), which is renamed to
  ``<run_id>.failed-<UTC time>.json`` so that a rerun of the sweep can write ``<run_id>.json``;
  the list goes on with the next run.
- Progress goes to stderr, one line per run. The last line on stdout is a JSON report:
  ``{"runs": [{"run_id", "status", "file", "wall_s", "measured_s", "error"}, ...],
  "wall_s": ..., "failed": N}``.

Exit status: 0 when the list was worked through (whatever each run's outcome), 2 when the plan
itself is unusable. Each run is over when ``run()`` returns in this process (its threads joined,
its file written), so a run's file and its reported status always agree.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

_TUPLES = ("splits", "stages")


_LOG: list = []


def _log(msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} [run_plan] {msg}"
    print(line, file=sys.stderr, flush=True)
    for fh in _LOG:
        fh.write(line + "\n")
        fh.flush()


def _status_of(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get("status")
    except (OSError, ValueError):
        return None


def _set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.stem}.failed-{stamp}.json")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.failed-{stamp}-{n}.json")
    path.rename(target)
    return target


def _one(spec: dict[str, Any]) -> dict[str, Any]:
    from paretopipe.errors import ParetoPipeError
    from paretopipe.runtime.source import RunConfig, RunFailed, run

    kwargs = {k: (tuple(v) if k in _TUPLES else v) for k, v in spec.items()}
    kwargs["out"] = Path(kwargs["out"])
    out: Path = kwargs["out"]
    run_id = kwargs.get("run_id") or out.stem
    report: dict[str, Any] = {"run_id": run_id, "file": str(out), "wall_s": 0.0, "measured_s": 0.0, "error": None}
    if out.exists():
        status = _status_of(out)
        if status == "ok":
            return {**report, "status": "skipped"}
        report["file"] = str(_set_aside(out))  # an earlier failed attempt left its file here
    t0 = time.monotonic()
    try:
        doc = run(RunConfig(**kwargs))
    except RunFailed as exc:
        report.update(status="failed", error=str(exc))
        if out.exists():
            report["file"] = str(_set_aside(out))
    except ParetoPipeError as exc:  # bad configuration: no file was written
        report.update(status="error", error=str(exc), file=None)
    except TypeError as exc:  # a plan field this version of paretopipe does not know
        report.update(status="error", error=f"plan does not match this paretopipe: {exc}", file=None)
    else:
        report.update(status=doc.get("status", "ok"), measured_s=float(doc["validity"]["duration_s"]))
    report["wall_s"] = round(time.monotonic() - t0, 4)
    return report


def _bundle(path: Path, files: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            if f.is_file():
                tar.add(f, arcname=f.name)
    tmp.replace(path)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(prog="run_plan.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="also append progress lines to this file (tail -f it)")
    parser.add_argument("--bundle", type=Path,
                        help="write the list's result files into this .tar.gz too, so that one fetch brings them all")
    args = parser.parse_args()
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        _LOG.append(open(args.log, "a", encoding="utf-8"))  # noqa: SIM115 (open for the whole list)
    try:
        plan = json.load(sys.stdin)
        runs = plan["runs"]
        if not isinstance(runs, list):
            raise TypeError("runs is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        print(f"run_plan: unusable plan on stdin: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    reports = []
    _log(f"{len(runs)} run(s) to do")
    for i, spec in enumerate(runs, 1):
        rep = _one(spec)
        reports.append(rep)
        detail = f"{rep['measured_s']:.1f} s measured of {rep['wall_s']:.1f} s" if rep["status"] == "ok" else (rep["error"] or "")
        _log(f"{i}/{len(runs)} {rep['run_id']}: {rep['status']} {detail}")
    failed = sum(r["status"] in ("failed", "error") for r in reports)
    if args.bundle:
        _bundle(args.bundle, [Path(r["file"]) for r in reports if r["file"]])
    print(json.dumps({"runs": reports, "wall_s": round(time.monotonic() - t0, 4), "failed": failed}))
    return 0


if __name__ == "__main__":
    from paretopipe.runtime.cores import quiet_waiting
    from paretopipe.threads import exit_code

    quiet_waiting()  # before torch is imported: idle OpenMP threads sleep (docs/performance.md)
    # No thread of ours may meet interpreter shutdown: it would abort the process after the
    # report was printed, and the task would fail on a list that was worked through.
    sys.exit(exit_code(main()))
