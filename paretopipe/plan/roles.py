"""The Ansible roles' entry points, ``python -m paretopipe.plan make|run|wait|busy|stop|calibrate``:
the sweep role plans on the controller (``make``, with the estimate and the budget verdict), the
source_runner role works through a round on the source device (``run``), follows it (``wait``)
and will not start beside a runner still at work (``busy``); playbooks/stop.yml stops a runner
(``stop``); each device measures its rate for the estimate (``calibrate``). Thin callers of the
planner and the runner."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError
from paretopipe.plan.estimate import (DEFAULT_BUDGET, Estimate, RunShape, calibrate, check_budget, estimate_tasks,
                                      parse_budget)
from paretopipe.plan.grammar import Configuration, parse_positive_list, parse_splits
from paretopipe.plan.repeats import RepeatRule, parse_repeats
from paretopipe.plan.runner import Outcome, Progress, work_through
from paretopipe.plan.spec import SweepSpec, Task, config_id, make_plan, run_id, sweep_identity

__all__ = ["spec_from_settings", "main"]


def spec_from_settings(s: Mapping[str, Any]) -> SweepSpec:
    """A :class:`SweepSpec` from the sweep role's settings (playbooks/group_vars/all/sweep.yml)."""
    from paretopipe.codecs import parse_codec_list
    from paretopipe.splitting import num_blocks as count_blocks

    devices = len(s["chain"])
    # The shards' manifest already says how many blocks the model has; without it, ask the model
    # (which imports torch and traces it: seconds on a small controller).
    n = int(s.get("num_blocks") or 0) or count_blocks(s["model"], num_classes=int(s["num_classes"]))
    splits = parse_splits(s["splits"], n, devices, model=s["model"], flag="splits")
    windows = parse_positive_list(s.get("windows", s.get("window", 1)), "windows", "1,4")
    batch_sizes = parse_positive_list(s.get("batch_sizes", s.get("batch_size", 8)), "batch_sizes", "1,8")
    codecs = tuple(c.name for c in parse_codec_list(s.get("codecs") or "none"))
    rule = parse_repeats(s["repeats"], target=float(s.get("repeats_target", 0.05)),
                         minimum=int(s.get("repeats_min", 3)), maximum=int(s.get("repeats_max", 10)))
    selection: dict[str, frozenset[Configuration]] = {}
    for cond, chosen in (s.get("selection_by_condition") or {}).items():
        selection[cond] = frozenset(Configuration.from_dict(c) for c in chosen)
    conditions = tuple(s["conditions"])
    backends = tuple(s["backends"])
    return SweepSpec(model=s["model"], num_blocks=n, devices=devices, splits=tuple(splits), windows=windows,
                     batch_sizes=batch_sizes, codecs=codecs, conditions=conditions, backends=backends, repeats=rule,
                     selection=selection)


def _chain_replay(s: Mapping[str, Any], spec: Any) -> list[dict[str, Any]]:
    """The chain's replayed devices (the inventory's ``paretopipe_replay``), checked against the sweep."""
    entries = list(s.get("chain_replay") or [])
    if not any(entries):
        return []
    from paretopipe.runtime.replay import check_chain_replay

    return check_chain_replay(entries, chain=list(s["chain"]), model=spec.model, num_classes=int(s["num_classes"]),
                              input_size=int(s["input_size"]) if int(s.get("input_size") or 0) else None,
                              batch_sizes=tuple(spec.batch_sizes), num_blocks=spec.num_blocks)


def _controller_plan(s: Mapping[str, Any]) -> dict[str, Any]:
    """``make``: the plan as the sweep playbook uses it (rounds per condition, each a device list)."""
    spec = spec_from_settings(s)
    replay = _chain_replay(s, spec)  # a profile that does not fit: an error before anything runs
    plan = make_plan(spec, s["results_dir"])
    # The devices' copies live under the controller's sweep identity: a new results folder never
    # resumes from a device's runs of another sweep, so the devices skip only what this sweep ran.
    token = sweep_identity(s["results_dir"], str(s["sweep_id"]))
    backends = list(spec.backends)
    ips = list(s["chain_ips"])
    template = {
        "model": s["model"], "sweep_id": s["sweep_id"], "warmup": int(s["warmup"]),
        "batches": None if float(s.get("duration") or 0) else int(s["batches"]),
        "duration_s": float(s["duration"]) if float(s.get("duration") or 0) else None,
        "min_batches": int(s["min_batches"]), "min_duration_s": float(s["min_duration"]), "input": s["input"],
        "num_classes": int(s["num_classes"]), "input_size": int(s["input_size"]) if int(s.get("input_size") or 0) else None,
        "seed": int(s["seed"]), "device": s["source_device"],
        "threads": int(s["source_threads"]) if int(s.get("source_threads") or 0) > 0 else None,
        "connect_timeout_s": float(s["connect_timeout"]), "timeout_s": float(s["receive_timeout"]),
    }
    if replay and replay[0]:  # the source device replays too
        template.update(replay=replay[0]["profile"], replay_timing=replay[0]["timing"],
                        replay_output=replay[0]["output"])
    stages = {b: [f"{ip}:{int(s['worker_port_base']) + i}" for ip in ips[1:]] for i, b in enumerate(backends)}
    rounds = [{"condition": cond, "runs": sum(len(t.repeats) for t in tasks),
               "tasks": [t.as_dict() for t in tasks]} for cond, tasks in plan.rounds()]
    est, budget = _estimate(s, spec, plan)
    return {
        "sweep_id": s["sweep_id"], "model": spec.model, "num_blocks": spec.num_blocks,
        "chain": list(s["chain"]), "splits": [list(c) for c in spec.splits], "windows": list(spec.windows),
        "batch_sizes": list(spec.batch_sizes), "codecs": list(spec.codecs), "configurations": len(spec.configurations()),
        "repeats": spec.repeats.as_dict(), "total": plan.total, "done": plan.done, "pending": plan.pending,
        "full_total": plan.full_total, "rounds": rounds,
        "estimate": est.as_dict(), "budget": budget,
        "identity": token,
        "device": {"run": template, "stages": stages, "results_dir": f"{s['device_results_dir']}/{token}",
                   "repeats": spec.repeats.as_dict()},
    }


def _estimate(s: Mapping[str, Any], spec: SweepSpec, plan: Any) -> tuple[Estimate, dict[str, Any]]:
    """The plan's cost and its budget verdict (``budget.message`` is None when it may start)."""
    rates = [float(r) for r in (s.get("device_rates") or [])]
    if len(rates) < spec.devices:  # no calibration on the devices: this machine's, for each of them
        rates = [calibrate()] * spec.devices
    est = estimate_tasks(spec.model, plan.tasks, RunShape.from_settings(s), rates,
                         num_classes=int(s["num_classes"]), input_size=int(s.get("input_size") or 0) or None,
                         conditions=len(plan.rounds()))
    budget_s = parse_budget(s.get("budget", DEFAULT_BUDGET))
    message = check_budget(est, budget_s, strategy=str(s.get("strategy") or "full"))
    return est, {"seconds": budget_s, "message": message}


def _device_run(job: Mapping[str, Any], status_file: Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    """``run``: one round's tasks on the source device, in this process (torch loads once)."""
    from paretopipe.errors import ParetoPipeError
    from paretopipe.runtime.source import RunConfig, RunFailed, run
    from paretopipe.runtime.stopping import Interrupted, mark_interrupted, preload

    preload()  # before the status file names this PID: a stop never lands inside an import

    dev = job["device"]
    template = dict(dev["run"])
    # the reference logits, once per sweep on this source (not fetched: only the round's files are)
    template.setdefault("reference_cache", str(Path(dev["results_dir"]) / "_cache" / "reference"))
    model = template["model"]
    rule = RepeatRule.from_dict(dev["repeats"])
    tasks = [Task.from_dict(t) for t in job["tasks"]]
    network = dict(job.get("network") or {})

    state: dict[str, Any] = Progress(0, 0, 0, 0, sum(len(t.repeats) for t in tasks), 0.0, "").as_dict()

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        t0 = time.monotonic()
        rid = run_id(model, task, repeat)
        if status_file is not None:
            _write_status(status_file, {**state, "current": rid, "finished": False})
        try:
            cfg = RunConfig(**template, splits=task.config.splits, stages=tuple(dev["stages"][task.backend]), out=path,
                            batch_size=task.config.batch_size, window=task.config.window, codec=task.config.codec,
                            backend=task.backend,
                            network_label=task.condition, network=network, repeat=repeat,
                            run_id=rid)
        except TypeError as exc:  # a plan field this version of paretopipe does not know
            return Outcome(False, error=f"plan does not match this paretopipe: {exc}", wall_s=time.monotonic() - t0)
        try:
            doc = run(cfg)
        except RunFailed as exc:
            return Outcome(False, error=str(exc), wall_s=time.monotonic() - t0)
        except ParetoPipeError as exc:  # bad configuration: no file was written
            return Outcome(False, error=str(exc), wall_s=time.monotonic() - t0)
        except Interrupted as exc:
            mark_interrupted(cfg, path, exc)
            raise
        return Outcome(True, doc, wall_s=time.monotonic() - t0)

    def progress(p: Progress) -> None:
        log(f"{p.last} | {p.line()}")
        state.clear()
        state.update(p.as_dict())
        if status_file is not None:
            _write_status(status_file, {**state, "finished": False})

    if status_file is not None:
        _write_status(status_file, {**state, "finished": False})
    t0 = time.monotonic()
    reports = work_through(model, tasks, rule, dev["results_dir"], execute, progress=progress,
                           seed=int(template.get("seed") or 0))
    files = [r.file for r in reports if r.file]
    files += [str(Path(dev["results_dir"]) / f"{config_id(model, t)}.repeats.json") for t in tasks if rule.auto]
    out = {"runs": [r.as_dict() for r in reports], "files": files, "wall_s": round(time.monotonic() - t0, 4),
           "failed": sum(r.status == "failed" for r in reports)}
    return out


def _write_status(path: Path, doc: Mapping[str, Any]) -> None:
    from paretoio.files import write_json_atomic

    write_json_atomic(path, {**doc, "pid": os.getpid()}, indent=0)


def _wait(status_file: Path, seconds: float, total: int) -> dict[str, Any]:
    """``wait``: block up to ``seconds`` for the runner to finish; its progress as JSON."""
    from paretopipe.polling import poll_until

    seen: dict[str, Any] = {}

    def over() -> bool:
        try:
            doc = json.loads(status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        if not doc.get("finished") and doc.get("pid") and not _alive(int(doc["pid"])):
            doc = {**doc, "finished": True, "last": f"the runner (pid {doc['pid']}) is gone"}  # died without saying so
        seen.clear()
        seen.update(doc)
        return bool(doc.get("finished"))

    poll_until(over, seconds, interval_s=1.0)
    doc = seen
    p = Progress(int(doc.get("done", 0)), int(doc.get("ok", 0)), int(doc.get("failed", 0)),
                 int(doc.get("skipped", 0)), int(doc.get("left", total)), float(doc.get("elapsed_s", 0.0)),
                 str(doc.get("last", "")))
    return {**p.as_dict(), "finished": bool(doc.get("finished")), "line": p.line()}


def _read_status(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _busy(status_file: Path) -> dict[str, Any]:
    """``busy``: is the runner of ``status_file`` still at work (alive, not finished)?"""
    doc = _read_status(status_file)
    pid = int(doc.get("pid") or 0)
    running = bool(pid) and not doc.get("finished") and pid != os.getpid() and _alive(pid)
    return {"running": running, "pid": pid or None, "current": doc.get("current") if running else None,
            "done": doc.get("done"), "left": doc.get("left")}


def _stop(status_file: Path, timeout_s: float) -> dict[str, Any]:
    """``stop``: SIGTERM to the runner of ``status_file`` (SIGKILL after ``timeout_s``); what stopped."""
    import signal

    from paretopipe.polling import poll_until

    state = _busy(status_file)
    if not state["running"]:
        return {"stopped": False, "pid": None, "run": None, "killed": False, "line": "no sweep runner was running"}
    pid = int(state["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    gone = poll_until(lambda: not _alive(pid), timeout_s, interval_s=0.2)
    if not gone:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poll_until(lambda: not _alive(pid), 10.0, interval_s=0.2)
    run = (_read_status(status_file).get("interrupted") or {}).get("run") or state["current"]
    return {"stopped": True, "pid": pid, "run": run, "killed": not gone, "done": state["done"], "left": state["left"],
            "line": (f"stopped the sweep runner (pid {pid}{', killed' if not gone else ''}) during run {run or '(none)'}"
                     f" after {state['done']} run(s), {state['left']} left")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by Ansible's async wrapper) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _bundle(path: Path, files: Iterable[str]) -> None:
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            if Path(f).is_file():
                tar.add(f, arcname=Path(f).name)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m paretopipe.plan make`` (controller: settings JSON on stdin, plan JSON out),
    ``run --status F --bundle B`` (source device: a round's job on stdin, report JSON out, the
    last line; SIGINT/SIGTERM: the run in progress is marked interrupted, exit 128+signal),
    ``wait --status F --seconds S`` (progress JSON), ``busy --status F``, ``stop --status F``
    (JSON: what was stopped), ``calibrate`` (JSON: FLOP/s). User mistakes: one line, exit 2."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m paretopipe.plan", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("make", help="plan a sweep from its settings (JSON on stdin)")
    run_p = sub.add_parser("run", help="work through a round on the source device (JSON on stdin)")
    run_p.add_argument("--status", type=Path, help="progress file, replaced after every run (for `wait`)")
    run_p.add_argument("--log", type=Path, help="also append progress lines to this file")
    run_p.add_argument("--bundle", type=Path, help="pack the round's files into this .tar.gz")
    wait_p = sub.add_parser("wait", help="wait up to --seconds for a runner; print its progress")
    wait_p.add_argument("--status", type=Path, required=True)
    wait_p.add_argument("--seconds", type=float, default=30.0)
    wait_p.add_argument("--total", type=int, default=0)
    stop_p = sub.add_parser("stop", help="stop the runner of --status (SIGTERM, SIGKILL after --timeout); say what stopped")
    stop_p.add_argument("--status", type=Path, required=True)
    stop_p.add_argument("--timeout", type=float, default=30.0)
    busy_p = sub.add_parser("busy", help="say whether the runner of --status is still at work (JSON)")
    busy_p.add_argument("--status", type=Path, required=True)
    cal_p = sub.add_parser("calibrate", help="this device's rate in FLOP/s (a short convolution benchmark; JSON)")
    cal_p.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.action == "wait":
            print(json.dumps(_wait(args.status, args.seconds, args.total)))
            return 0
        if args.action == "stop":
            print(json.dumps(_stop(args.status, args.timeout)))
            return 0
        if args.action == "busy":
            print(json.dumps(_busy(args.status)))
            return 0
        if args.action == "calibrate":
            from paretopipe.plan.estimate import calibrate

            print(json.dumps({"flops_per_s": calibrate(args.threads or None)}))
            return 0
        try:
            doc = json.load(sys.stdin)
        except ValueError as exc:
            raise ConfigError(f"unusable JSON on stdin: {exc}") from None
        if args.action == "make":
            print(json.dumps(_controller_plan(doc)))
            return 0
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        if args.log:
            args.log.parent.mkdir(parents=True, exist_ok=True)
        logs = [open(args.log, "a", encoding="utf-8")] if args.log else []  # noqa: SIM115 (the round's length)

        def log(msg: str) -> None:
            line = f"{time.strftime('%H:%M:%S')} [plan run] {msg}"
            print(line, file=sys.stderr, flush=True)
            for fh in logs:
                fh.write(line + "\n")
                fh.flush()

        from paretopipe.runtime.stopping import RESUME_HINT, Interrupted, raise_on_signals

        interrupted: dict[str, Any] = {}
        try:
            with raise_on_signals():
                report = _device_run(doc, args.status, log)
            if args.bundle:
                _bundle(args.bundle, report["files"])
        except Interrupted as exc:
            status = _read_status(args.status) if args.status is not None else {}
            interrupted = {"signal": str(exc), "run": status.get("current")}
            log(f"interrupted by {exc} during run {interrupted['run'] or '(none started)'}; its file says "
                f"failed (interrupted); {RESUME_HINT}")
            return exc.exit_code
        finally:
            if args.status is not None:
                _write_status(args.status, {**_read_status(args.status), "finished": True,
                                            **({"interrupted": interrupted} if interrupted else {})})
            for fh in logs:
                fh.close()
        print(json.dumps(report))
        return 0
    except (KeyError, TypeError) as exc:
        print(f"paretopipe.plan: unusable {args.action} input: missing or bad field {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"paretopipe.plan: error: {exc}", file=sys.stderr)
        return 2
