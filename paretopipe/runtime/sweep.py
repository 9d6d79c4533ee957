"""``paretopipe sweep``: the sweep's configurations x repeats, with local workers on loopback.

What runs, what is done and how repeats stop are :mod:`paretopipe.plan`'s (the same planner and
runner as the Ansible suite: one split grammar, one resume rule). This module supplies the local
part: the stage workers as processes on free loopback ports (``paretopipe stage serve``), and the
source as a process per run (``paretopipe run``), judged by :func:`paretopipe.results.judge_run`.
A failed run's file is set aside (``<run_id>.failed-<time>.json``) and the sweep goes on,
restarting any worker that died; running the sweep again reruns it. Workers are stopped by PID
at the end, always.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from paretopipe.errors import ConfigError, StageError
from paretopipe.plan import Outcome, Progress, RepeatRule, SweepSpec, Task, make_plan, parse_splits, work_through
from paretopipe.polling import poll_until
from paretopipe.plan.estimate import RunShape, calibrate, check_budget, estimate_tasks, format_duration
from paretopipe.runtime.source import RunConfig, failed_document
from paretopipe.runtime.stopping import RESUME_HINT, Interrupted, mark_interrupted, raise_on_signals


@dataclass(frozen=True)
class SweepConfig:
    """A local sweep: `run` is the template every run starts from (its splits, stages, out,
    window, batch size and repeat are filled in per run); `devices` is the chain's length (the
    source and `devices - 1` local workers); `device` is the workers' device."""

    run: RunConfig
    out: Path
    splits: str = "all"
    devices: int = 2
    windows: tuple[int, ...] | None = None  # None: the template's window
    batch_sizes: tuple[int, ...] | None = None  # None: the template's batch size
    repeats: RepeatRule = field(default_factory=RepeatRule)
    sweep_id: str | None = None
    device: str = "cpu"
    codecs: tuple[str, ...] = ()  # every split runs with each codec; empty: the template's codec
    budget_s: float | None = None  # over it, the sweep does not start (paretopipe.plan.estimate); None: no budget
    # per chain device 0..devices-1 (0: the source), the profile it replays ({profile, timing,
    # output}, paretopipe.runtime.replay) or {}; empty: no device replays
    replay: tuple[dict[str, str], ...] = ()

    @property
    def model(self) -> str:
        return self.run.model

    def spec(self) -> SweepSpec:
        from paretopipe.splitting import num_blocks

        n = num_blocks(self.model, num_classes=self.run.num_classes)
        chains = parse_splits(self.splits, n, self.devices, model=self.model, flag="--splits")
        return SweepSpec(model=self.model, num_blocks=n, devices=self.devices, splits=tuple(chains),
                         windows=self.windows or (self.run.window,),
                         batch_sizes=self.batch_sizes or (self.run.batch_size,),
                         codecs=self.codecs or (self.run.codec,), conditions=(self.run.network_label,),
                         backends=(self.run.backend,), repeats=self.repeats)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _python() -> list[str]:
    return [sys.executable, "-m", "paretopipe"]


class LocalWorker:
    """One `paretopipe stage serve` process on a loopback port."""

    def __init__(self, index: int, cfg: SweepConfig, log_dir: Path) -> None:
        self.index, self.cfg, self.log_dir = index, cfg, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker{self.index}.log"

    def start(self) -> None:
        cfg = self.cfg
        for _ in range(5):  # the free port can be taken between probe and bind
            self.address = f"127.0.0.1:{free_port()}"
            cmd = [*_python(), "stage", "serve", "--listen", self.address, "--device", cfg.device,
                   "--backend", cfg.run.backend]
            if cfg.run.threads:
                cmd += ["--threads", str(cfg.run.threads)]
            if cfg.run.token_file:
                cmd += ["--token-file", cfg.run.token_file]
            entry = cfg.replay[self.index] if self.index < len(cfg.replay) else {}
            if entry:
                cmd += ["--replay", entry["profile"], "--replay-timing", entry["timing"],
                        "--replay-output", entry["output"]]
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - held for the worker's lifetime, closed in stop()
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            proc, log_path = self.proc, self.log_path
            poll_until(lambda: proc.poll() is not None or b"listening on" in log_path.read_bytes()[-4096:], 30)
            if proc.poll() is None:
                return  # listening, or slow to start: the source retries its connection anyway
            self._log.close()
        raise StageError(f"could not start a local worker; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self._log is not None:
            self._log.close()


def _run_args(rc: RunConfig) -> list[str]:
    """The `paretopipe run` command line for one run."""
    cmd = [*_python(), "run", "--model", rc.model, "--backend", rc.backend, "--stages", ",".join(rc.stages),
           "--batch-size", str(rc.batch_size), "--window", str(rc.window), "--batches", str(rc.batches),
           "--warmup", str(rc.warmup), "--min-batches", str(rc.min_batches),
           "--min-duration", str(rc.min_duration_s), "--input", rc.input, "--num-classes", str(rc.num_classes),
           "--seed", str(rc.seed), "--connect-timeout", str(rc.connect_timeout_s), "--timeout", str(rc.timeout_s),
           "--network-label", rc.network_label, "--repeat", str(rc.repeat), "--out", str(rc.out),
           "--codec", rc.codec, "--fidelity-batches", str(rc.fidelity_batches)]
    for k in rc.splits:
        cmd += ["--split", str(k)]
    for flag, value in (("--input-size", rc.input_size), ("--weights", rc.weights), ("--threads", rc.threads),
                        ("--token-file", rc.token_file), ("--sweep-id", rc.sweep_id),
                        ("--reference-cache", rc.reference_cache), ("--replay", rc.replay)):
        if value is not None:
            cmd += [flag, str(value)]
    if rc.replay is not None:
        cmd += ["--replay-timing", rc.replay_timing, "--replay-output", rc.replay_output]
    if rc.network:
        cmd += ["--network-json", json.dumps(rc.network)]
    return cmd


def sweep(cfg: SweepConfig, *, stream: IO[str] | None = None) -> int:
    """Run the sweep; 0 when every run is ok (or was already done), 1 when any failed."""
    from paretopipe.results import judge_run, read_result

    stream = stream or sys.stdout
    cfg.run.validate_settings()
    spec = cfg.spec()
    if any(cfg.replay):  # a profile that does not fit the sweep: an error before anything starts
        from paretopipe.runtime.replay import check_chain_replay

        entries = check_chain_replay(list(cfg.replay), chain=[f"{i}" for i in range(cfg.devices)], model=cfg.model,
                                     num_classes=cfg.run.num_classes, input_size=cfg.run.input_size,
                                     batch_sizes=spec.batch_sizes, num_blocks=spec.num_blocks)
        cfg = replace(cfg, replay=tuple(entries))
        if entries[0]:
            cfg = replace(cfg, run=replace(cfg.run, replay=entries[0]["profile"], replay_timing=entries[0]["timing"],
                                           replay_output=entries[0]["output"]))
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = cfg.sweep_id or out.resolve().name
    log_dir = out / "_logs"
    log_dir.mkdir(exist_ok=True)
    plan = make_plan(spec, out)
    template = replace(cfg.run, sweep_id=sweep_id, run_id=None,
                       reference_cache=cfg.run.reference_cache or str(out / "_cache" / "reference"))
    workers = [LocalWorker(i + 1, cfg, log_dir) for i in range(cfg.devices - 1)]
    t_sweep = time.monotonic()
    rule = "auto (95% CI within {:.0%} of the mean, {}..{} runs)".format(
        cfg.repeats.target, cfg.repeats.minimum, cfg.repeats.maximum) if cfg.repeats.auto else str(cfg.repeats.count)
    print(f"sweep {sweep_id}: {cfg.model}, {len(spec.splits)} split configuration(s) x {len(spec.windows)} window(s) "
          f"x {len(spec.batch_sizes)} batch size(s) x {len(spec.codecs)} codec(s) = {len(spec.configurations())} configurations, repeats {rule}: "
          f"{plan.total} runs, {plan.done} already done, {plan.pending} to run -> {out}", file=stream, flush=True)
    rc0 = cfg.run
    shape = RunShape(warmup=rc0.warmup, batches=rc0.batches, duration_s=rc0.duration_s, min_batches=rc0.min_batches,
                     min_duration_s=rc0.min_duration_s)
    est = estimate_tasks(cfg.model, plan.tasks, shape, [calibrate(rc0.threads)] * cfg.devices,
                         num_classes=rc0.num_classes, input_size=rc0.input_size, conditions=0)
    print(f"sweep {sweep_id}: {est.line()}", file=stream, flush=True)
    over = check_budget(est, cfg.budget_s, budget_flag="--budget", predicted="paretopipe predict, then --splits",
                        splits="--splits", no_budget="--budget none")
    if over:
        raise ConfigError(over)

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        for w in workers:
            if not w.alive():
                if w.proc is not None:
                    print(f"  worker {w.index} is gone (exit {w.proc.returncode}); restarting it", file=stream, flush=True)
                w.stop()
                w.start()
        c = task.config
        rc = replace(template, splits=c.splits, window=c.window, batch_size=c.batch_size, codec=c.codec, repeat=repeat,
                     out=path,
                     stages=tuple(w.address for w in workers))
        t0 = time.monotonic()
        current["run"] = path.stem
        with open(log_dir / f"{path.stem}.log", "w", encoding="utf-8") as log_fh:
            proc = subprocess.Popen(_run_args(rc), stdout=log_fh, stderr=subprocess.PIPE, text=True,
                                    stdin=subprocess.DEVNULL)
            try:
                _, stderr = proc.communicate()
            except Interrupted as exc:
                stop_process(proc)  # the run's source, by its PID
                mark_interrupted(rc, path, exc)
                raise
            log_fh.write(stderr or "")
        current["run"] = None
        took = time.monotonic() - t0
        lines = [ln for ln in (stderr or "").splitlines() if "error" in ln.lower()]
        outcome, reason = judge_run(path, proc.returncode, reason=lines[-1] if lines else None,
                                    failed_doc=lambda why, rc=rc: failed_document(rc, why))
        if outcome == "ok":
            return Outcome(True, read_result(path), wall_s=took)
        return Outcome(False, error=reason, wall_s=took)

    def progress(p: Progress) -> None:
        eta = "" if p.eta_s is None else f" | ETA {format_duration(p.eta_s)}"
        print(f"[{p.done}/{p.done + p.left}] {p.last}{eta}", file=stream, flush=True)

    current: dict[str, str | None] = {"run": None}
    try:
        with raise_on_signals():
            reports = work_through(cfg.model, plan.tasks, cfg.repeats, out, execute, progress=progress,
                                   describe=lambda t: {"sweep_id": sweep_id}, seed=cfg.run.seed)
    except Interrupted as exc:
        for w in workers:
            w.stop()
        print(f"sweep {sweep_id} interrupted by {exc} during run {current['run'] or '(between runs)'}: stopped its "
              f"source and {len(workers)} worker(s); the interrupted run's file says failed (interrupted); "
              f"{RESUME_HINT}", file=stream, flush=True)
        return exc.exit_code
    finally:
        for w in workers:
            w.stop()
    counts = {k: sum(r.status == k for r in reports) for k in ("ok", "skipped", "failed")}
    print(f"sweep {sweep_id} done in {time.monotonic() - t_sweep:.1f} s: {counts['ok']} ok, "
          f"{counts['skipped'] + plan.done} skipped, {counts['failed']} failed"
          + (" (failed runs' files are set aside as *.failed-*.json; run the sweep again to redo them)"
             if counts["failed"] else ""),
          file=stream, flush=True)
    return 1 if counts["failed"] else 0

