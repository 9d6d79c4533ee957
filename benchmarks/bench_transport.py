#!/usr/bin/env python
"""Transport alone: one large tensor over loopback, our framing vs pickle-and-concatenate.

- ours: the wire header + raw tensor bytes, received with recv_into into a buffer preallocated
  from the expected shape (paretopipe.transport.wire), then viewed as a tensor;
- baseline (re-implemented here only for comparison; never used by ParetoPipe): what the
  upstream TCP backend does per batch: pickle a dict holding the tensor, send it behind an
  8-byte length, receive by concatenating the chunks `recv` returns, then unpickle.

Times are end to end: from the sender starting to serialise/send to the receiver holding the
tensor. The sender is a thread; both socket calls release the GIL. Target: ours >= 1 GB/s at 100 MB.

Usage: python benchmarks/bench_transport.py [--mb 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import pickle
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from _runtime_common import machine


def _pair() -> tuple[socket.socket, socket.socket]:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    client = socket.create_connection(lsock.getsockname())
    server, _ = lsock.accept()
    lsock.close()
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def _round(send: Callable[[], None], receive: Callable[[], Any]) -> tuple[float, Any]:
    """Start `send` on a thread and run `receive` here; seconds from send start to received."""
    t0 = [0.0]
    go = threading.Event()

    def sender() -> None:
        go.wait()
        t0[0] = time.perf_counter()
        send()

    th = threading.Thread(target=sender)
    th.start()
    go.set()
    got = receive()
    elapsed = time.perf_counter() - t0[0]
    th.join()
    return elapsed, got


def ours(tensor, repeats: int) -> list[float]:
    import torch

    from paretopipe.transport.tcp import _tensor_bytes
    from paretopipe.transport.wire import FrameReader, recv_payload_into, send_data

    tx, rx = _pair()
    reader = FrameReader(rx)
    out = torch.empty_like(tensor)  # preallocated once, from the shape the session declared
    view = _tensor_bytes(out)

    def send() -> None:
        send_data(tx, _tensor_bytes(tensor), dtype="float32", shape=tuple(tensor.shape), records=(),
                  session_id=1, batch_id=0, t_send=0.0)

    def receive() -> None:
        hdr = reader.header()
        reader.records(hdr)
        recv_payload_into(reader, hdr, view)

    times = [_round(send, receive)[0] for _ in range(repeats)]
    assert torch.equal(out, tensor)
    tx.close()
    rx.close()
    return times


def baseline(tensor, repeats: int) -> list[float]:
    import torch

    tx, rx = _pair()

    def send() -> None:
        data = pickle.dumps({"batch_id": 0, "tensor": tensor})
        tx.sendall(struct.pack(">Q", len(data)) + data)

    def receive() -> Any:
        (length,) = struct.unpack(">Q", rx.recv(8, socket.MSG_WAITALL))
        data = b""
        while len(data) < length:
            packet = rx.recv(length - len(data))
            if not packet:
                raise ConnectionError("closed")
            data += packet
        return pickle.loads(data)  # the baseline being measured; local data only

    times, msg = [], None
    for _ in range(repeats):
        elapsed, msg = _round(send, receive)
        times.append(elapsed)
    assert msg is not None and torch.equal(msg["tensor"], tensor)
    tx.close()
    rx.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, nargs="+", default=[12.85, 102.76], help="tensor sizes in MB (1e6 bytes)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch

    print(f"machine: {machine()}")
    ok = True
    for mb in args.mb:
        n = int(mb * 1e6 / 4)
        tensor = torch.randn(n)
        size = tensor.numel() * 4
        t_ours = statistics.median(ours(tensor, args.repeats))
        t_base = statistics.median(baseline(tensor, args.repeats))
        rate = size / t_ours / 1e9
        if mb >= 100:
            ok &= rate >= 1.0
        print(f"{size / 1e6:8.2f} MB: ours {t_ours * 1e3:8.2f} ms = {rate:5.2f} GB/s"
              f"{' (target >= 1 GB/s: ' + ('met' if rate >= 1.0 else 'NOT met') + ')' if mb >= 100 else ''}; "
              f"pickle+concatenate {t_base * 1e3:9.2f} ms = {size / t_base / 1e9:5.2f} GB/s; "
              f"ours is {t_base / t_ours:5.1f}x faster (median of {args.repeats})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
