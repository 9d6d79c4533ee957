"""A user-space delay line for kernels without ``sch_netem``, built on NFQUEUE.

iptables hands each packet from a shaped peer to a netfilter queue
(``-j NFQUEUE --queue-num N``). This process holds the packet's *verdict*, not the packet:
the kernel keeps the packet, we only receive its metadata (``NFQNL_COPY_META``) and answer
``NF_ACCEPT`` once the configured delay has passed. Packets leave in arrival order, so one
batch verdict (``NFQNL_MSG_VERDICT_BATCH``: "accept every id up to this one") releases all the
packets that are due at once, and GSO super-packets are queued whole (``NFQA_CFG_F_GSO``):
the work per second stays small enough for Python at the rates the testbed promises
(100 Mbit/s; measured by ``paretopipe testbed check``).

Jitter: each packet's delay is ``delay + U(-jitter, +jitter)`` (netem's default, uniform
distribution), but a packet never leaves before the one ahead of it: the line keeps order, as a
real queue does, and unlike netem with jitter and no rate (which reorders). Under bulk traffic
the mean delay therefore drifts towards ``delay + jitter``; ping-like traffic sees the mean.

The delay line runs inside the receiving device's network namespace (the queue belongs to the
namespace) and is meant to be started by :mod:`paretopipe.testbed`; it runs until SIGTERM.
Run ``python -m paretopipe.testbed.delayline --help`` for its flags.

If the process dies, packets bound for it are dropped (no ``--queue-bypass``): a broken delay
line shows up as a dead link, never as a silently unshaped one.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4

NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_ACCEPT = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian, packed by hand)
_NLATTR = struct.Struct("=HH")


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    pad = (-length) % 4
    return _NLATTR.pack(length, kind) + payload + b"\0" * pad


def _message(msg_type: int, queue: int, attrs: bytes, *, seq: int, flags: int) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def packet_ids(data: bytes) -> list[int]:
    """Packet ids in one datagram from the kernel (usually one packet per datagram)."""
    ids = []
    offset = 0
    end = len(data)
    while offset + _NLMSGHDR.size <= end:
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos = offset + _NLMSGHDR.size + _NFGENMSG.size
            stop = offset + length
            while pos + _NLATTR.size <= stop:
                alen, atype = _NLATTR.unpack_from(data, pos)
                if alen < _NLATTR.size:
                    break
                if atype & 0x3FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, pos + _NLATTR.size)[0])
                    break
                pos += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def verdict_batch_message(queue: int, packet_id: int) -> bytes:
    """"Accept every queued packet with an id up to ``packet_id``" for ``queue``."""
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    return _message((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH, queue, attrs, seq=0,
                    flags=NLM_F_REQUEST)


class NfQueue:
    """One bound netfilter queue, in metadata-copy mode, GSO packets whole."""

    def __init__(self, queue: int, maxlen: int = 50000) -> None:
        self.queue = queue
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            cfg = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
            self._request(cfg, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._request(cfg, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
            self._request(cfg, _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
            self._request(
                cfg,
                _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
                + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO)),
            )
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def _request(self, msg_type: int, attrs: bytes) -> None:
        """Send a config message and wait for the kernel's ack (raises on an error reply)."""
        self._seq += 1
        self.sock.send(
            _message(msg_type, self.queue, attrs, seq=self._seq, flags=NLM_F_REQUEST | NLM_F_ACK)
        )
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_ERROR and seq == self._seq:
                    (err,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    if err:
                        raise OSError(-err, f"nfqueue config: {os.strerror(-err)}")
                    return
                offset += (length + 3) & ~3

    def accept_upto(self, packet_id: int) -> None:
        self.sock.send(verdict_batch_message(self.queue, packet_id))

    def close(self) -> None:
        try:
            cfg = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
            self.sock.setblocking(True)
            self.sock.send(
                _message(
                    cfg,
                    self.queue,
                    _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)),
                    seq=0,
                    flags=NLM_F_REQUEST,
                )
            )
        except OSError:
            pass
        self.sock.close()


def run(queue: int, delay_s: float, jitter_s: float, *, seed: int | None = None) -> None:
    """Serve ``queue`` until SIGTERM/SIGINT: release each packet ``delay_s`` (± jitter) late."""
    stop = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # select() is retried after a signal (PEP 475); a wakeup pipe makes it return instead.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    rng = random.Random(seed)
    nfq = NfQueue(queue)
    held: collections.deque[tuple[float, int]] = collections.deque()
    last_release = 0.0
    recv = nfq.sock.recv
    clock = time.monotonic
    print(f"delayline: queue {queue} delay {delay_s * 1e3:g} ms jitter {jitter_s * 1e3:g} ms",
          flush=True)
    try:
        while not stop:
            timeout = None if not held else max(0.0, held[0][0] - clock())
            try:
                readable, _, _ = select.select([nfq.sock, wake_r], [], [], timeout)
            except InterruptedError:
                continue
            if nfq.sock in readable:
                while True:
                    try:
                        data = recv(262144)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno == errno.ENOBUFS:
                            continue
                        raise
                    now = clock()
                    for pid in packet_ids(data):
                        due = now + delay_s
                        if jitter_s:
                            due += rng.uniform(-jitter_s, jitter_s)
                        if due < last_release:
                            due = last_release  # keep order
                        last_release = due
                        held.append((due, pid))
            if held:
                now = clock()
                last = None
                while held and held[0][0] <= now:
                    last = held.popleft()[1]
                if last is not None:
                    nfq.accept_upto(last)
    finally:
        # Let whatever is still held go, rather than leave it to the kernel to drop.
        if held:
            try:
                nfq.sock.setblocking(True)
                nfq.accept_upto(held[-1][1])
            except OSError:
                pass
        nfq.close()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)


def _parse_ms(text: str) -> float:
    value = text.strip().lower()
    if value.endswith("ms"):
        value = value[:-2]
    return float(value) / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paretopipe.testbed.delayline",
        description="Hold packets from an NFQUEUE for a fixed delay (plus jitter), in order.",
    )
    parser.add_argument("--queue", type=int, required=True, help="netfilter queue number")
    parser.add_argument("--delay", type=_parse_ms, required=True, help="one-way delay, e.g. 20ms")
    parser.add_argument("--jitter", type=_parse_ms, default=0.0, help="jitter, e.g. 2ms")
    parser.add_argument("--seed", type=int, default=None, help="seed for the jitter draws")
    args = parser.parse_args(argv)
    run(args.queue, args.delay, args.jitter, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
