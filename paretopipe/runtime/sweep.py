"""``paretopipe sweep``: every split x repeat, with local workers on loopback.

The sweep starts the stage workers as processes on free loopback ports (``paretopipe stage
serve``), runs the source as a process per run (``paretopipe run``), and writes one result file
per run into ``--out``. A run whose file exists is skipped (resume). A failed run leaves a file
marked failed (written by the source, or by the sweep when the source could not) and the sweep
goes on, restarting any worker that died. Workers are stopped by PID at the end, always.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from paretopipe.errors import ConfigError, StageError
from paretopipe.runtime.source import RunConfig, default_run_id, failed_document


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: `run` is the template every run starts from (its splits, stages, out and repeat
    are filled in per run); `device` is the workers' device."""

    run: RunConfig
    out: Path
    splits: str = "all"
    repeats: int = 1
    sweep_id: str | None = None
    device: str = "cpu"
    codecs: tuple[str, ...] = ()  # every split runs with each codec; empty: the template's codec

    @property
    def model(self) -> str:
        return self.run.model


def parse_splits(text: str, model: str, *, num_classes: int) -> list[tuple[int, ...]]:
    """'all' -> every split point 0..N; '3,5' -> two-stage runs; '3:9' -> a three-stage chain."""
    from paretopipe.splitting import num_blocks

    n = num_blocks(model, num_classes=num_classes)
    if text.strip() == "all":
        return [(k,) for k in range(n + 1)]
    out: list[tuple[int, ...]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            ks = tuple(int(k) for k in item.split(":"))
        except ValueError:
            raise ConfigError(f"bad --splits item {item!r}: use all, K or K1:K2 (comma-separated)") from None
        if list(ks) != sorted(ks) or not all(0 <= k <= n for k in ks):
            raise ConfigError(f"--splits item {item!r}: split indices must be non-decreasing within 0..{n} for {model}; "
                              f"see `paretopipe splits {model}`")
        out.append(ks)
    if not out:
        raise ConfigError("--splits is empty")
    return out


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
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - held for the worker's lifetime, closed in stop()
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                if b"listening on" in self.log_path.read_bytes()[-4096:]:
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                return  # slow to start; the source retries its connection anyway
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
                        ("--token-file", rc.token_file), ("--sweep-id", rc.sweep_id)):
        if value is not None:
            cmd += [flag, str(value)]
    if rc.network:
        cmd += ["--network-json", json.dumps(rc.network)]
    return cmd


def sweep(cfg: SweepConfig, *, stream: IO[str] | None = None) -> int:
    """Run the sweep; 0 when every run is ok (or was already done), 1 when any failed."""
    from paretopipe.results import judge_run, read_result

    stream = stream or sys.stdout
    cfg.run.validate_settings()
    chains = parse_splits(cfg.splits, cfg.model, num_classes=cfg.run.num_classes)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = cfg.sweep_id or out.resolve().name
    log_dir = out / "_logs"
    log_dir.mkdir(exist_ok=True)
    codecs = cfg.codecs or (cfg.run.codec,)
    runs = [(splits, codec, r) for splits in chains for codec in codecs for r in range(cfg.repeats)]
    template = replace(cfg.run, sweep_id=sweep_id, run_id=None)
    workers = [LocalWorker(i + 1, cfg, log_dir) for i in range(max(len(s) for s in chains))]
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    t_sweep = time.monotonic()
    print(f"sweep {sweep_id}: {cfg.model}, {len(chains)} split configuration(s) x {len(codecs)} codec(s) "
          f"x {cfg.repeats} repeat(s) "
          f"= {len(runs)} runs -> {out}", file=stream, flush=True)
    try:
        for n, (splits, codec, repeat) in enumerate(runs, start=1):
            rc = replace(template, splits=splits, repeat=repeat, codec=codec)
            rid = default_run_id(rc)
            path = out / f"{rid}.json"
            tag = f"[{n}/{len(runs)}] split {':'.join(map(str, splits))} codec {codec} repeat {repeat}"
            if path.exists():
                counts["skipped"] += 1
                print(f"{tag}: skipped (result file exists)", file=stream, flush=True)
                continue
            for w in workers:
                if not w.alive():
                    if w.proc is not None:
                        print(f"{tag}: worker {w.index} is gone (exit {w.proc.returncode}); restarting it", file=stream, flush=True)
                    w.stop()
                    w.start()
            t0 = time.monotonic()
            rc = replace(rc, out=path, stages=tuple(w.address for w in workers[: len(splits)]))
            proc = subprocess.run(_run_args(rc), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
            took = time.monotonic() - t0
            (log_dir / f"{rid}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
            lines = [ln for ln in (proc.stderr or "").splitlines() if "error" in ln.lower()]
            outcome, reason = judge_run(path, proc.returncode, reason=lines[-1] if lines else None,
                                        failed_doc=lambda why, rc=rc: failed_document(rc, why))
            if outcome == "ok":
                doc = read_result(path)
                counts["ok"] += 1
                thr = doc["summary"]["throughput_img_s"]
                lat = doc["summary"]["latency_s"]["mean"]
                print(f"{tag}: ok, {thr:.2f} img/s, latency {lat * 1e3:.1f} ms ({took:.1f} s)", file=stream, flush=True)
                continue
            counts["failed"] += 1
            print(f"{tag}: FAILED ({took:.1f} s): {reason}", file=stream, flush=True)
    finally:
        for w in workers:
            w.stop()
    print(f"sweep {sweep_id} done in {time.monotonic() - t_sweep:.1f} s: {counts['ok']} ok, "
          f"{counts['skipped']} skipped, {counts['failed']} failed"
          + (" (failed runs keep their files; delete them to retry)" if counts["failed"] else ""),
          file=stream, flush=True)
    return 1 if counts["failed"] else 0

