"""The transfer floor: what moving a batch's bytes costs with nothing but two sockets.

Neither transport can carry an activation faster than the path under it: on loopback, the
kernel copying the bytes into and out of the socket buffers and waking the receiver; on a real
link, the link itself. `measure` plays a sequential session with no runtime at all: this
process busy-waits for the head's compute time, sends `n_in` bytes to a helper process over
plain blocking TCP (one ``sendmsg``, ``recv_into`` a reused buffer, TCP_NODELAY, as the TCP
backend does), the helper busy-waits for the tail's compute time and sends `n_out` bytes back.
Both stamp CLOCK_MONOTONIC, which all processes on a host share, so the one-way times need no
clock-offset correction. Busy-waiting keeps a core busy as the compute would, while the
receiving side sleeps in ``recv`` as the real stages do; it does not evict the caches as a
convolution does, so the floor measured here is if anything lower than the real one.

Run as a script it is the helper: ``python _wire_floor.py`` prints its port and serves one
connection.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

_SETUP = struct.Struct("!QQdI")  # n_in, n_out, tail busy-wait seconds, batches
_STAMP = struct.Struct("!d")
_BACK = struct.Struct("!dd")  # helper's send time, the forward hop it measured
TIMEOUT_S = 30.0


@dataclass
class Floor:
    hop0_s: list[float]  # activation, source -> helper
    hop1_s: list[float]  # result, helper -> source

    @property
    def total_s(self) -> list[float]:
        return [a + b for a, b in zip(self.hop0_s, self.hop1_s, strict=True)]


def _socket(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT_S)
    return sock


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n


def _send(sock: socket.socket, head: bytes, body: memoryview) -> None:
    sent = sock.sendmsg((head, body))
    if sent < len(head):
        sock.sendall(head[sent:])
        sent = len(head)
    if sent - len(head) < len(body):
        sock.sendall(body[sent - len(head):])


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def measure(n_in: int, n_out: int, *, head_s: float, tail_s: float, batches: int, warmup: int = 3) -> Floor:
    """One helper process, `warmup + batches` round trips; the counted batches' one-way times."""
    helper = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert helper.stdout is not None
        port = int(helper.stdout.readline())
        with _socket(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)) as sock:
            sock.sendall(_SETUP.pack(n_in, n_out, tail_s, warmup + batches))
            act = memoryview(bytearray(os.urandom(n_in)))  # real pages, not the shared zero page
            back = bytearray(_BACK.size + n_out)
            floor = Floor([], [])
            for i in range(warmup + batches):
                _busy(head_s)
                _send(sock, _STAMP.pack(time.monotonic()), act)
                _recv_into(sock, memoryview(back))
                t_done = time.monotonic()
                t_sent, hop0 = _BACK.unpack_from(back)
                if i >= warmup:
                    floor.hop0_s.append(hop0)
                    floor.hop1_s.append(t_done - t_sent)
        helper.wait(timeout=TIMEOUT_S)
        return floor
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()


def _serve() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(TIMEOUT_S)
        print(ls.getsockname()[1], flush=True)
        conn, _ = ls.accept()
    with _socket(conn):
        setup = bytearray(_SETUP.size)
        _recv_into(conn, memoryview(setup))
        n_in, n_out, tail_s, batches = _SETUP.unpack(setup)
        buf = bytearray(_STAMP.size + n_in)
        out = memoryview(bytearray(os.urandom(n_out)))
        for _ in range(batches):
            _recv_into(conn, memoryview(buf))
            hop0 = time.monotonic() - _STAMP.unpack_from(buf)[0]
            _busy(tail_s)
            _send(conn, _BACK.pack(time.monotonic(), hop0), out)


if __name__ == "__main__":
    _serve()
