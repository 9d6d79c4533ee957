"""``paretopipe sweep``: every split x repeat, with local workers on loopback.

The sweep starts the stage workers as processes on free loopback ports (``paretopipe stage
serve``), runs the source as a process per run (``paretopipe run``), and writes one result file
per run into ``--out``. A run whose file exists is skipped (resume). A failed run leaves a file
marked failed (written by the source, or by the sweep when the source could not) and the sweep
goes on, restarting any worker that died. Workers are stopped by PID at the end, always.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from paretopipe.errors import ConfigError, StageError


@dataclass(frozen=True)
class SweepConfig:
    model: str
    out: Path
    splits: str = "all"
    backend: str = "tcp"
    repeats: int = 1
    sweep_id: str | None = None
    batch_size: int = 8
    window: int = 1
    batches: int = 50
    warmup: int = 5
    min_batches: int = 20
    min_duration_s: float = 0.0
    input: str = "synthetic"
    num_classes: int = 10
    input_size: int | None = None
    weights: str | None = None
    seed: int = 0
    threads: int | None = None
    token_file: str | None = None
    device: str = "cpu"
    connect_timeout_s: float = 60.0
    timeout_s: float = 60.0
    network_label: str = "none"
    verbose: bool = False


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
            cmd = [*_python(), "stage", "serve", "--listen", self.address, "--device", cfg.device, "--backend", cfg.backend]
            if cfg.threads:
                cmd += ["--threads", str(cfg.threads)]
            if cfg.token_file:
                cmd += ["--token-file", cfg.token_file]
            self._log = open(self.log_path, "ab")
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
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()


def _run_args(cfg: SweepConfig, splits: tuple[int, ...], repeat: int, addresses: list[str], out: Path,
              sweep_id: str) -> list[str]:
    cmd = [*_python(), "run", "--model", cfg.model, "--backend", cfg.backend,
           "--stages", ",".join(addresses[: len(splits)]), "--batch-size", str(cfg.batch_size),
           "--window", str(cfg.window), "--batches", str(cfg.batches), "--warmup", str(cfg.warmup),
           "--min-batches", str(cfg.min_batches), "--min-duration", str(cfg.min_duration_s),
           "--input", cfg.input, "--num-classes", str(cfg.num_classes), "--seed", str(cfg.seed),
           "--connect-timeout", str(cfg.connect_timeout_s), "--timeout", str(cfg.timeout_s),
           "--network-label", cfg.network_label, "--sweep-id", sweep_id, "--repeat", str(repeat),
           "--out", str(out)]
    for k in splits:
        cmd += ["--split", str(k)]
    for flag, value in (("--input-size", cfg.input_size), ("--weights", cfg.weights),
                        ("--threads", cfg.threads), ("--token-file", cfg.token_file)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _write_failed(cfg: SweepConfig, splits: tuple[int, ...], repeat: int, addresses: list[str], out: Path,
                  sweep_id: str, error: str) -> None:
    """The source died without writing its file: record the failure ourselves."""
    from paretopipe.results import write_result
    from paretopipe.runtime.source import RunConfig, failed_document

    rc = RunConfig(model=cfg.model, splits=splits, stages=tuple(addresses[: len(splits)]), out=out,
                   batch_size=cfg.batch_size, window=cfg.window, batches=cfg.batches, warmup=cfg.warmup,
                   min_batches=cfg.min_batches, min_duration_s=cfg.min_duration_s, input=cfg.input,
                   num_classes=cfg.num_classes, input_size=cfg.input_size, weights=cfg.weights, seed=cfg.seed,
                   threads=cfg.threads, backend=cfg.backend, network_label=cfg.network_label,
                   sweep_id=sweep_id, repeat=repeat)
    write_result(failed_document(rc, error), out)


def sweep(cfg: SweepConfig, *, stream: IO[str] | None = None) -> int:
    """Run the sweep; 0 when every run is ok (or was already done), 1 when any failed."""
    from paretopipe.results import read_result, run_id

    stream = stream or sys.stdout
    chains = parse_splits(cfg.splits, cfg.model, num_classes=cfg.num_classes)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = cfg.sweep_id or out.resolve().name
    log_dir = out / "_logs"
    log_dir.mkdir(exist_ok=True)
    runs = [(splits, r) for splits in chains for r in range(cfg.repeats)]
    workers = [LocalWorker(i + 1, cfg, log_dir) for i in range(max(len(s) for s in chains))]
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    t_sweep = time.monotonic()
    print(f"sweep {sweep_id}: {cfg.model}, {len(chains)} split configuration(s) x {cfg.repeats} repeat(s) "
          f"= {len(runs)} runs -> {out}", file=stream, flush=True)
    try:
        for n, (splits, repeat) in enumerate(runs, start=1):
            rid = run_id(model=cfg.model, splits=splits, backend=cfg.backend, network=cfg.network_label,
                         batch_size=cfg.batch_size, window=cfg.window, repeat=repeat)
            path = out / f"{rid}.json"
            tag = f"[{n}/{len(runs)}] split {':'.join(map(str, splits))} repeat {repeat}"
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
            cmd = _run_args(cfg, splits, repeat, [w.address for w in workers], path, sweep_id)
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
            took = time.monotonic() - t0
            (log_dir / f"{rid}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
            if proc.returncode == 0:
                doc = read_result(path)
                counts["ok"] += 1
                thr = doc["summary"]["throughput_img_s"]
                lat = doc["summary"]["latency_s"]["mean"]
                print(f"{tag}: ok, {thr:.2f} img/s, latency {lat * 1e3:.1f} ms ({took:.1f} s)", file=stream, flush=True)
                continue
            counts["failed"] += 1
            lines = [ln for ln in (proc.stderr or "").splitlines() if "error" in ln.lower()]
            reason = lines[-1] if lines else f"source exited with status {proc.returncode}"
            if not path.exists():
                _write_failed(cfg, splits, repeat, [w.address for w in workers], path, sweep_id, reason)
            print(f"{tag}: FAILED ({took:.1f} s): {reason}", file=stream, flush=True)
    finally:
        for w in workers:
            w.stop()
    print(f"sweep {sweep_id} done in {time.monotonic() - t_sweep:.1f} s: {counts['ok']} ok, "
          f"{counts['skipped']} skipped, {counts['failed']} failed"
          + (" (failed runs keep their files; delete them to retry)" if counts["failed"] else ""),
          file=stream, flush=True)
    return 1 if counts["failed"] else 0

