"""Measurement endpoints for ``paretopipe testbed check``: a timed bulk TCP transfer.

``recv`` listens, takes one connection, reads into a preallocated buffer and records when the
bytes arrived; ``send`` connects and writes either for a fixed time or a fixed number of bytes.
Both print one JSON line. The achieved rate is taken over the late part of the transfer, after
slow start and the token bucket's initial burst: ``bytes(t1..t2) / (t2 - t1)`` with
``t1 = first byte + warmup``. ``--sha256`` makes both ends hash what they moved (the payload is a
deterministic pseudo-random stream), which shows a lossy link still delivers bit-exact data.

Run inside a device's namespace, e.g. ``ip netns exec pp-pi2 python -m paretopipe.testbed.probe
recv --bind 10.77.0.12 --port 5201``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import time

from paretopipe.polling import poll_until

CHUNK = 256 * 1024


def payload_block(seed: int, size: int = CHUNK) -> bytes:
    """A deterministic, incompressible block (SHAKE-256 of the seed)."""
    return hashlib.shake_256(f"paretopipe-probe-{seed}".encode()).digest(size)


def recv(bind: str, port: int, *, warmup_s: float, timeout_s: float, sha: bool,
         bin_s: float | None = None, epoch: float | None = None) -> dict:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((bind, port))
    server.listen(1)
    server.settimeout(timeout_s)
    print(json.dumps({"listening": f"{bind}:{port}"}), flush=True)
    conn, peer = server.accept()
    server.close()
    conn.settimeout(timeout_s)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    digest = hashlib.sha256() if sha else None
    marks: list[tuple[float, int]] = []
    total = 0
    clock = time.monotonic
    with conn:
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            now = clock()
            total += n
            marks.append((now, total))
            if digest is not None:
                digest.update(view[:n])
    result: dict = {"peer": peer[0], "bytes": total}
    if bin_s is not None and marks:
        # bytes that arrived in each bin of bin_s after `epoch` (CLOCK_MONOTONIC, which every
        # namespace shares: the caller's trace clock)
        zero = marks[0][0] if epoch is None else epoch
        bins = [0] * (int((marks[-1][0] - zero) // bin_s) + 1)
        before = 0
        for t, b in marks:
            if t >= zero:
                bins[int((t - zero) // bin_s)] += b - before
            before = b
        result["bin_s"] = bin_s
        result["bins_bytes"] = bins
    if digest is not None:
        result["sha256"] = digest.hexdigest()
    if len(marks) >= 2:
        first_t, first_b = marks[0]
        last_t, last_b = marks[-1]
        start_t = first_t + warmup_s
        if last_t - start_t < 0.2 * (last_t - first_t):
            start_t = first_t + 0.5 * (last_t - first_t)  # transfer shorter than planned
        base_b = first_b
        base_t = first_t
        for t, b in marks:
            if t > start_t:
                break
            base_t, base_b = t, b
        span = last_t - base_t
        result["duration_s"] = round(last_t - first_t, 4)
        result["window_s"] = round(span, 4)
        result["rate_mbit"] = round((last_b - base_b) * 8 / span / 1e6, 3) if span > 0 else None
    else:
        result["rate_mbit"] = None
    return result


def send(host: str, port: int, *, seconds: float | None, nbytes: int | None, seed: int,
         sha: bool, connect_timeout_s: float) -> dict:
    block = payload_block(seed)
    errors: list[OSError] = []

    def connect() -> socket.socket | None:
        try:
            return socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as exc:  # the receiver may not listen yet: try again
            errors.append(exc)
            return None

    sock = poll_until(connect, connect_timeout_s, interval_s=0.05)
    if sock is None:
        raise errors[-1]
    digest = hashlib.sha256() if sha else None
    sent = 0
    start = time.monotonic()
    with sock:
        sock.settimeout(max(30.0, (seconds or 0) * 4))
        while True:
            if seconds is not None and time.monotonic() - start >= seconds:
                break
            if nbytes is not None:
                if sent >= nbytes:
                    break
                chunk = memoryview(block)[: min(len(block), nbytes - sent)]
            else:
                chunk = memoryview(block)
            sock.sendall(chunk)
            if digest is not None:
                digest.update(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        # Wait for the receiver to close: every byte has then been read.
        sock.recv(1)
    result: dict = {"bytes": sent, "elapsed_s": round(time.monotonic() - start, 4)}
    if digest is not None:
        result["sha256"] = digest.hexdigest()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paretopipe.testbed.probe",
                                     description="Timed bulk TCP transfer between two hosts.")
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("recv", help="accept one connection and measure what arrives")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--warmup", type=float, default=0.5, help="seconds skipped before measuring")
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--sha256", action="store_true")
    r.add_argument("--bin", type=float, help="also report the bytes that arrived per BIN seconds")
    r.add_argument("--epoch", type=float,
                   help="time.monotonic() the bins count from (default: the first byte)")
    s = sub.add_parser("send", help="connect and send for --seconds or --bytes")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--seconds", type=float)
    group.add_argument("--bytes", type=int, dest="nbytes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sha256", action="store_true")
    s.add_argument("--connect-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.mode == "recv":
        out = recv(args.bind, args.port, warmup_s=args.warmup, timeout_s=args.timeout,
                   sha=args.sha256, bin_s=args.bin, epoch=args.epoch)
    else:
        out = send(args.host, args.port, seconds=args.seconds, nbytes=args.nbytes,
                   seed=args.seed, sha=args.sha256, connect_timeout_s=args.connect_timeout)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
