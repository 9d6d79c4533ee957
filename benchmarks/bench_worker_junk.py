"""A worker under junk connections: does a legitimate session still start, and how much slower is
one in progress? (issue 28; docs/protocol.md, "Admission").

On loopback: one worker (`stage serve`, TCP backend) on 127.0.0.1; junk comes from 127.0.0.1, in
a process of its own; the legitimate source connects from 127.0.0.2. Cases:

- clean: no junk;
- silent: 1000 connections that never send a byte, held open (reopened when the worker closes one);
- slow: 200 connections that send one byte a second;
- auth-silent: 200 connections that complete auth and then go silent;
- in progress: one session, its batches timed in alternating phases without and with all of the
  junk above arriving (5 phases each), so that both sides see the same machine.

Each case runs 3 times, the cases interleaved; the figures are medians with min-max.

For each case it prints the time to READY (connect, auth, clock probes, HELLO, the worker
builds its stage or takes it from its cache, READY) and the median batch latency, against the clean run; then the added
latency per batch of the session in progress, and its ratio to the goal (<= 5%). Every loop is
bounded in count and time. Model: resnet18 split 5 at 64 px, batch 2, so the stage is small and
the wire and the worker's accept loop matter.

    python benchmarks/bench_worker_junk.py [--batches N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from _runtime_common import local_worker, machine

GOAL = 0.05
MODEL, SPLIT, BATCH, SIZE = "resnet18", 5, 2, 64
LEGIT_FROM = "127.0.0.2"
JUNK_FROM = "127.0.0.1"
RENEW_S = 1.0  # the junk reopens what the worker closed this often
JUNK_LIMIT_S = 120.0  # a junk process ends by itself after this, whatever happens


# --------------------------------------------------------------------------- junk (own process)


def _junk_main(address: str, kinds: dict[str, int], ready: Any, stop: Any) -> None:
    from paretopipe.transport.control import parse_address
    from paretopipe.transport.wire import FrameReader, client_auth

    target = parse_address(address)
    open_: dict[str, list[socket.socket]] = {k: [] for k in kinds}

    def one(kind: str) -> socket.socket | None:
        s = socket.socket()
        s.bind((JUNK_FROM, 0))
        s.settimeout(2.0)
        try:
            s.connect(target)
            if kind == "auth":
                client_auth(s, FrameReader(s), None, peer="worker")
        except Exception:  # noqa: BLE001 - refused or timed out: reopened at the next renewal
            s.close()
            return None
        s.setblocking(False)
        return s

    def closed(s: socket.socket) -> bool:
        try:
            return s.recv(65536) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def fill() -> None:
        for kind, n in kinds.items():
            socks = open_[kind]
            for s in [s for s in socks if closed(s)]:
                socks.remove(s)
                s.close()
            for _ in range(n - len(socks)):
                s = one(kind)
                if s is not None:
                    socks.append(s)
                elif kind != "silent":
                    break  # refused at once: try again at the next renewal, not in a tight loop

    t_end = time.monotonic() + JUNK_LIMIT_S
    fill()
    ready.set()
    last = time.monotonic()
    while not stop.is_set() and time.monotonic() < t_end:
        for s in open_.get("slow", []):
            try:
                s.send(b"\x00")  # one byte a second of a frame header that never completes
            except OSError:
                pass
        stop.wait(1.0)
        if time.monotonic() - last >= RENEW_S:
            fill()
            last = time.monotonic()
    for socks in open_.values():
        for s in socks:
            s.close()


class Junk:
    def __init__(self, address: str, kinds: dict[str, int]) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.stop = ctx.Event(), ctx.Event()
        self.proc = ctx.Process(target=_junk_main, args=(address, kinds, self.ready, self.stop), daemon=True)

    def __enter__(self) -> Junk:
        self.proc.start()
        if not self.ready.wait(60):
            raise SystemExit("the junk process did not open its connections within 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()  # our own child, by its handle
            self.proc.join(5)


# --------------------------------------------------------------------------- the legitimate session


class Session:
    """A legitimate source's session over the TCP backend, from LEGIT_FROM, batches of zeros."""

    def __init__(self, address: str, session_id: int) -> None:
        import torch

        from paretopipe.splitting import stage_io_shapes
        from paretopipe.transport.base import SessionPlan, SessionSpec
        from paretopipe.transport.tcp import TcpSourceLink

        _, head_out = stage_io_shapes(MODEL, (SPLIT,), 0, batch_size=BATCH, input_size=SIZE, num_classes=10)
        spec = SessionSpec(session_id=session_id, model=MODEL, num_classes=10, input_size=SIZE, splits=(SPLIT,),
                           stage_index=1, num_stages=2, batch_size=BATCH, dtype="float32",
                           weights={"kind": "random", "seed": 0}, next_address=None, window=1, timeout_s=30,
                           threads=1, run_id=f"bench-worker-junk-{session_id}")
        self.plan = SessionPlan(addresses=(address,), spec=spec, head_out_shape=tuple(head_out),
                                logits_shape=(BATCH, 10), token=None, connect_timeout_s=30,
                                source_address=LEGIT_FROM)
        self.link = TcpSourceLink()
        self.tensor = torch.zeros(tuple(head_out))
        self.next_id = 0

    def open(self) -> float:
        t0 = time.monotonic()
        self.link.open(self.plan)
        return time.monotonic() - t0

    def batches(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.monotonic()
            self.link.send(self.next_id, self.tensor)
            res = self.link.recv(30)
            out.append(time.monotonic() - t0)
            assert res.batch_id == self.next_id
            self.next_id += 1
        return out

    def close(self) -> None:
        try:
            self.link.finish()
        finally:
            self.link.close()


def one_session(address: str, sid: int, batches: int) -> tuple[float, float]:
    s = Session(address, sid)
    try:
        ready = s.open()
        s.batches(3)  # warm-up
        lat = s.batches(batches)
    finally:
        s.close()
    return ready, statistics.median(lat)


def worker_cpu() -> Callable[[], float]:
    """The worker process's CPU seconds so far (our child running `stage serve`)."""
    import psutil

    (proc,) = [p for p in psutil.Process().children() if "serve" in p.cmdline()]

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    return cpu


def timed_phase(s: Session, n: int, cpu: Callable[[], float]) -> tuple[float, float]:
    """Median batch latency of `n` batches, and the worker's CPU use meanwhile (cores)."""
    c0, t0 = cpu(), time.monotonic()
    lat = statistics.median(s.batches(n))
    return lat, (cpu() - c0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30, help="timed batches per case and per phase (default: 30)")
    ap.add_argument("--rounds", type=int, default=3, help="repeats of each case, interleaved (default: 3)")
    ap.add_argument("--phases", type=int, default=5,
                    help="phases without and with junk of the session in progress (default: 5)")
    args = ap.parse_args()
    if args.batches < 5 or args.rounds < 1 or args.phases < 1:
        raise SystemExit("--batches must be at least 5, --rounds and --phases at least 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # the junk process inherits it
    print(f"machine: {machine()}; open files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    print(f"{MODEL} split {SPLIT}, {SIZE} px, batch {BATCH}, window 1; worker on 127.0.0.1, source from {LEGIT_FROM}, "
          f"junk from {JUNK_FROM} (reopened every {RENEW_S:g} s)")
    cases = (("clean", {}), ("silent x1000", {"silent": 1000}), ("slow preamble x200", {"slow": 200}),
             ("auth then silent x200", {"auth": 200}))
    t_start = time.monotonic()
    with local_worker("--backend", "tcp") as address:
        one_session(address, 1, 3)  # the worker's first build, outside every case
        got: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
        for r in range(args.rounds):  # the cases interleaved, so that drift in the machine's load hits all
            for i, (name, kinds) in enumerate(cases):
                sid = 10 + 10 * r + i
                if kinds:
                    with Junk(address, kinds):
                        time.sleep(RENEW_S)  # let the worker's first refusals and a renewal happen
                        got[name].append(one_session(address, sid, args.batches))
                else:
                    got[name].append(one_session(address, sid, args.batches))
        print(f"\n{'case':<24}{'READY ms':>10}{'(min-max)':>16}{'batch ms':>10}{'(min-max)':>16}{'vs clean':>10}")
        base = statistics.median(b for _, b in got["clean"])
        for name, runs in got.items():
            rd, bt = [r for r, _ in runs], [b for _, b in runs]
            print(f"{name:<24}{statistics.median(rd) * 1e3:>10.1f}{f'{min(rd) * 1e3:.1f}-{max(rd) * 1e3:.1f}':>16}"
                  f"{statistics.median(bt) * 1e3:>10.2f}{f'{min(bt) * 1e3:.2f}-{max(bt) * 1e3:.2f}':>16}"
                  f"{statistics.median(bt) / base:>9.2f}x")

        # the session in progress: phases without and with junk, alternating
        s = Session(address, 99)
        quiet: list[float] = []
        noisy: list[float] = []
        cores: dict[str, list[float]] = {"quiet": [], "noisy": []}
        cpu = worker_cpu()
        try:
            s.open()
            s.batches(3)
            for _ in range(args.phases):
                lat, c = timed_phase(s, args.batches, cpu)
                quiet.append(lat)
                cores["quiet"].append(c)
                with Junk(address, {"silent": 1000, "slow": 200, "auth": 200}):
                    lat, c = timed_phase(s, args.batches, cpu)
                    noisy.append(lat)
                    cores["noisy"].append(c)
        finally:
            s.close()
    print(f"\nworker CPU use during the session (cores, median of phases): without junk "
          f"{statistics.median(cores['quiet']):.2f}, with junk arriving {statistics.median(cores['noisy']):.2f}")
    q, n = statistics.median(quiet), statistics.median(noisy)
    added = n / q - 1
    print(f"session in progress, median batch latency per phase (ms): without junk "
          f"{', '.join(f'{x * 1e3:.2f}' for x in quiet)}; with junk arriving {', '.join(f'{x * 1e3:.2f}' for x in noisy)}")
    ratios = [b / a - 1 for a, b in zip(quiet, noisy)]
    print(f"added latency per batch, phase by phase: {', '.join(f'{x:+.1%}' for x in ratios)}")
    print(f"added latency per batch (median with junk over median without): {added:+.1%} (goal <= {GOAL:.0%}: ratio to the bound {added / GOAL:.2f})")
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
