"""The TCP backend: our own framing (:mod:`paretopipe.wire`) over plain sockets.

Wiring of a session with N stages (stage 0 is the source, which runs the head)::

    source ──ctrl+data──▶ stage 1 ──JOIN data──▶ stage 2 ── … ──▶ stage N-1
       ▲  ╰──────── ctrl ───────────────────────────────────────────╯ │
       ╰──────────────── logits back on the source's ctrl connection ─╯

The source connects to every stage (control: HELLO/READY/END/STATS/ERROR), starting with the
last one. Stage i (i < N-1) connects to stage i+1 and sends JOIN; the data of hop 0 travels on
the source's connection to stage 1, and the last stage returns the logits on the connection the
source opened to it, so the source stamps send and completion on its own clock. With two stages
there is exactly one connection. Every connection measures the clock offset between its ends
(min-RTT ping) before the session, so each receiver can turn the sender's send stamp into a
transfer time for the hop it received. docs/protocol.md has the message sequence.
"""

from __future__ import annotations

import errno
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from paretopipe.codecs import NONE as CODEC_NONE
from paretopipe.codecs import Codec, CodecError, Decoder, Encoder, parse_codec
from paretopipe.errors import ConfigError, ParetoPipeError, StageError, TransportError
from paretopipe.transport.base import (
    InBatch,
    ResultBatch,
    SessionPlan,
    SessionSpec,
    SourceLink,
    StageHandler,
    StageInfo,
    StageLink,
)
from paretopipe.threads import join, spawn
from paretopipe.transport.events import StageEvents
from paretopipe.wire import (
    DEFAULT_MAX_FRAME_BYTES,
    AuthError,
    FrameReader,
    MsgType,
    PeerClosed,
    ProtocolError,
    ReceiveTimeout,
    StageRecord,
    client_auth,
    nbytes,
    parse_json,
    recv_payload_into,
    send_control,
    send_data,
    send_json,
    server_auth,
    shape_str,
)

log = logging.getLogger(__name__)

#: Seconds a fresh connection gets to authenticate and say what it wants.
PREAMBLE_TIMEOUT_S = 10.0
#: Concurrent not-yet-identified connections a worker entertains; more are closed at once.
MAX_PENDING_CONNECTIONS = 32
CLOCK_PROBES = 8
#: How long a HELLO waits for the previous session to finish closing before it is refused as busy.
BUSY_GRACE_S = 5.0
#: Bounded wait for a reader or connection thread once its socket is closed.
READER_JOIN_S = 10.0


# --------------------------------------------------------------------------- sockets


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:29500")
    return host.strip("[]"), int(port)


#: TCP keep-alive: probe an idle connection after 5 s, every 2 s, give up after 3 misses, so a
#: peer whose host vanished (no FIN, no RST) is noticed in about 11 s, well within the receive
#: timeout, and the source can name the stage. A slow but alive peer answers the probes.
_KEEPALIVE = (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        if hasattr(socket, name):  # Linux; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def listen(address: str) -> socket.socket:
    """A listening socket; a port in use is a ConfigError naming it."""
    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve listen address {address}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use; pick another --listen port or stop what holds it") from None
        raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from None
    sock.listen(16)
    return sock


def connect(address: str, *, deadline: float, what: str) -> socket.socket:
    """Connect, retrying with exponential backoff until `deadline` (monotonic)."""
    host, port = parse_address(address)
    delay = 0.05
    last: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransportError(f"could not connect to {what} at {address}: {last.strerror if last else 'timed out'} (gave up after retrying; is `paretopipe stage serve` running there?)")
        try:
            sock = socket.create_connection((host, port), timeout=min(remaining, 5.0))
        except OSError as exc:
            last = exc
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
            continue
        _tune(sock)
        return sock


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _measure_offset(sock: socket.socket, reader: FrameReader) -> float:
    """Peer clock minus our clock, from the ping with the smallest round trip."""
    best_rtt, best = float("inf"), 0.0
    for _ in range(CLOCK_PROBES):
        t0 = time.monotonic()
        send_control(sock, MsgType.PING, t_send=t0)
        hdr, _ = reader.control([MsgType.PONG])
        t1 = time.monotonic()
        if t1 - t0 < best_rtt:
            best_rtt, best = t1 - t0, hdr.t_send - (t0 + t1) / 2
    return best


def _tensor_bytes(tensor: Any) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    import torch

    if tensor.dtype is torch.bfloat16:  # numpy has no bfloat16: look at it as bytes first
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    return memoryview(tensor.numpy()).cast("B")


def _tensor_meta(tensor: Any) -> tuple[str, tuple[int, ...]]:
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)


def send_encoded(sock: socket.socket, encoder: Encoder, tensor: Any, records: Sequence[StageRecord], *,
                 session_id: int, batch_id: int) -> None:
    """Encode `tensor` with the link's codec and send it as one DATA frame. The frame's send
    stamp is taken after encoding, so the receiver's transfer time is the wire's alone; the
    encode time travels in the header (t_aux)."""
    dtype, shape = _tensor_meta(tensor)
    if encoder.codec == CODEC_NONE:
        payload, scale, zero_point, encode_s = _tensor_bytes(tensor), 1.0, 0, 0.0
    else:
        enc = encoder.encode(tensor)
        payload, scale, zero_point, encode_s = enc.payload, enc.scale, enc.zero_point, enc.encode_s
    send_data(sock, payload, dtype=dtype, shape=shape, records=records, session_id=session_id, batch_id=batch_id,
              t_send=time.monotonic(), codec_id=encoder.codec.wire_id, scale=scale, zero_point=zero_point,
              encode_s=encode_s)


def recv_decoded(reader: FrameReader, hdr: Any, decoder: Decoder, tensor: Any, view: memoryview) -> float:
    """Receive a DATA payload (header and records already read and checked) and decode it into
    `tensor` (whose bytes are `view`). Returns the decode time (0 for the raw codec, whose bytes
    go straight into `view`)."""
    if decoder.direct:
        recv_payload_into(reader, hdr, view)
        return 0.0
    staging = decoder.staging(hdr.length)
    recv_payload_into(reader, hdr, staging)
    return decoder.decode(staging, hdr.scale, hdr.zero_point, tensor)


def codec_refusal(spec: SessionSpec, accepted: Sequence[Codec], *, peer: str, me: str) -> str | None:
    """Why this worker refuses the session's codec (naming both sides), or None when it accepts it."""
    try:
        codec = parse_codec(spec.codec)
    except ConfigError:
        codec = None
    if codec is not None and codec in accepted:
        return None
    return (f"codec mismatch: {peer} asks for codec {spec.codec!r}, but stage {spec.stage_index} ({me}) supports "
            f"{', '.join(c.name for c in accepted)}")


@dataclass
class _Conn:
    sock: socket.socket
    reader: FrameReader
    name: str  # e.g. "stage 2 (10.0.0.3:29500)" or "the source (10.0.0.1:51234)"
    offset: float = 0.0  # peer clock minus our clock


# --------------------------------------------------------------------------- source side


class TcpSourceLink(SourceLink):
    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._conns: dict[int, _Conn] = {}
        self._infos: dict[int, StageInfo] = {}
        self._events = StageEvents()
        self._spec: SessionSpec | None = None
        self._logits_shape: tuple[int, ...] = ()
        self._send_lock = threading.Lock()
        # The last stage's connection while the session runs: recv() reads the results from it
        # itself (no reader thread, no hand-off). None: every connection has a reader thread
        # feeding self._events, and recv() takes results from there (the RPC link's way).
        self._direct: _Conn | None = None
        # the tensor the next result is received into, made after the one before arrived
        self._result_buffer: tuple[Any, memoryview] | None = None
        self._readers: list[threading.Thread] = []
        self._encoder: Encoder | None = None  # the session's codec, made at the first send

    # -- open
    def open(self, plan: SessionPlan) -> list[StageInfo]:
        spec = plan.spec
        self._spec, self._logits_shape = spec, plan.logits_shape
        n = spec.num_stages
        if len(plan.addresses) != n - 1:
            raise ConfigError(f"{n - 1} stage addresses needed for splits {list(spec.splits)}, got {len(plan.addresses)}")
        deadline = time.monotonic() + plan.connect_timeout_s
        for idx in range(n - 1, 0, -1):  # last stage first: stage i JOINs stage i+1 when it gets HELLO
            addr = plan.addresses[idx - 1]
            name = f"stage {idx} ({addr})"
            sock = connect(addr, deadline=deadline, what=f"stage {idx}")
            conn = _Conn(sock, FrameReader(sock, max_frame_bytes=self._max), name)
            self._conns[idx] = conn
            try:
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                client_auth(sock, conn.reader, plan.token, peer=name)
                conn.offset = _measure_offset(sock, conn.reader)
                stage_spec = plan.stage_spec(idx)
                hello = stage_spec.to_json()
                hello["upstream_clock_offset_s"] = conn.offset if idx == 1 else None
                send_json(sock, MsgType.HELLO, hello, session_id=spec.session_id)
                sock.settimeout(spec.timeout_s + plan.connect_timeout_s)  # building a stage takes a while
                _, answer = conn.reader.control_json([MsgType.READY])
            except ParetoPipeError as exc:
                raise StageError(f"{name}: {exc}") from None
            except OSError as exc:
                raise StageError(f"{name}: connection failed during the handshake: {exc}") from None
            self._infos[idx] = StageInfo.from_json(answer, address=addr)
            sock.settimeout(spec.timeout_s)
        first, last = self._infos[1], self._infos[n - 1]
        if first.in_shape != tuple(plan.head_out_shape) or first.dtype != spec.dtype:
            raise StageError(
                f"shape mismatch between the source (sends {shape_str(spec.dtype, plan.head_out_shape)}) and "
                f"stage 1 ({first.address}, expects {shape_str(first.dtype, first.in_shape)})"
            )
        if last.out_shape != tuple(plan.logits_shape):
            raise StageError(
                f"shape mismatch between stage {n - 1} ({last.address}, returns {shape_str(last.dtype, last.out_shape)}) "
                f"and the source (expects logits {shape_str(spec.dtype, plan.logits_shape)}; num_classes={spec.num_classes})"
            )
        for idx, conn in self._conns.items():
            if idx == n - 1:
                self._direct = conn  # recv() reads the results; finish() gives it a reader thread
            else:
                self._readers.append(spawn(self._read_loop, idx, conn, name=f"src-recv-{idx}"))
        return [self._infos[i] for i in range(1, n)]

    # -- per-connection reader: results from the last stage, STATS, ERROR, EOF from any
    def _read_loop(self, idx: int, conn: _Conn) -> None:
        import torch

        assert self._spec is not None
        last = idx == self._spec.num_stages - 1
        dtype = getattr(torch, self._spec.dtype)
        try:
            while True:
                try:
                    hdr = conn.reader.header()
                except ReceiveTimeout as exc:
                    if exc.got == 0:
                        continue  # idle; recv() enforces the result timeout
                    raise
                if hdr.msg_type == MsgType.DATA and last:
                    self._events.put("result", idx, self._read_result(conn, hdr, dtype))
                elif not self._events.on_control(idx, hdr, conn.reader):
                    raise ProtocolError(f"unexpected {hdr.msg_type.name} frame")
        except (TransportError, OSError) as exc:
            self._events.on_reader_exit(idx, exc)

    def _read_result(self, conn: _Conn, hdr: Any, dtype: Any) -> ResultBatch:
        """The rest of a result frame whose header `hdr` was just read."""
        assert self._spec is not None
        if hdr.shape != self._logits_shape or hdr.dtype != self._spec.dtype:
            raise ProtocolError(f"result {shape_str(hdr.dtype or '?', hdr.shape)} is not the expected {shape_str(self._spec.dtype, self._logits_shape)}")
        if hdr.codec_id != CODEC_NONE.wire_id:
            raise ProtocolError(f"the result came encoded (codec id {hdr.codec_id}); logits return uncoded")
        records = conn.reader.records(hdr)
        logits, view = self._result_buffer or self._new_result_buffer(dtype)
        recv_payload_into(conn.reader, hdr, view)
        t_done = time.monotonic()
        # the next result's tensor now, off the critical path (each result keeps its own tensor)
        self._result_buffer = self._new_result_buffer(dtype)
        return ResultBatch(hdr.batch_id, logits, records, t_done - (hdr.t_send - conn.offset), hdr.length, t_done,
                           return_raw_bytes=len(view), return_encode_s=hdr.t_aux)

    def _new_result_buffer(self, dtype: Any) -> tuple[Any, memoryview]:
        import torch

        logits = torch.empty(self._logits_shape, dtype=dtype)
        return logits, _tensor_bytes(logits)

    def _address(self, idx: int) -> str | None:
        return self._infos[idx].address if idx in self._infos else None

    def _failure(self, first: tuple[str, int, Any]) -> StageError:
        return self._events.failure(first, self._address)

    # -- data path
    def send(self, batch_id: int, tensor: Any) -> float:
        assert self._spec is not None
        conn = self._conns[1]
        with self._send_lock:
            if self._encoder is None:
                self._encoder = Encoder(parse_codec(self._spec.codec))
            t_start = time.monotonic()
            try:
                send_encoded(conn.sock, self._encoder, tensor, (), session_id=self._spec.session_id, batch_id=batch_id)
            except OSError as exc:
                raise self._failure(("eof", 1, f"sending batch {batch_id} failed: {exc}")) from None
        return t_start

    def recv(self, timeout: float) -> ResultBatch:
        if self._direct is not None:
            return self._recv_direct(self._direct, timeout)
        try:
            kind, idx, item = self._events.get(timeout)
        except queue.Empty:
            raise self._no_result(timeout) from None
        if kind == "result":
            return item
        raise self._failure((kind, idx, item))

    def _no_result(self, timeout: float) -> StageError:
        return StageError(
            f"no result from the chain within {timeout:g} s (receive timeout); stages: "
            + ", ".join(f"{i} at {info.address}" for i, info in sorted(self._infos.items())))

    def _recv_direct(self, conn: _Conn, timeout: float) -> ResultBatch:
        """Read the next result from the last stage's connection in the calling thread.

        The other connections' reader threads report failures through self._events; one
        reported before this call is raised at once. A failure while waiting here shows up on
        this connection too (the last stage reports losing its upstream, or closes)."""
        import torch

        assert self._spec is not None
        idx = self._spec.num_stages - 1
        try:
            reported = self._events.get(0)
        except queue.Empty:
            reported = None
        if reported is not None:
            raise self._failure(reported)
        if conn.sock.gettimeout() != timeout:
            conn.sock.settimeout(timeout)
        try:
            try:
                hdr = conn.reader.header()
            except ReceiveTimeout as exc:
                if exc.got == 0:
                    raise self._no_result(timeout) from None
                raise
            if hdr.msg_type == MsgType.DATA:
                return self._read_result(conn, hdr, getattr(torch, self._spec.dtype))
            if not self._events.on_control(idx, hdr, conn.reader):
                raise ProtocolError(f"unexpected {hdr.msg_type.name} frame")
        except (TransportError, OSError) as exc:
            self._events.on_reader_exit(idx, exc)
            try:
                event = self._events.get(0)
            except queue.Empty:  # the link was closed meanwhile
                raise StageError(f"{conn.name}: {exc}") from None
            raise self._failure(event) from None
        # STATS or ERROR in the middle of the session: the stage gave up
        raise self._failure(self._events.get(0))

    def finish(self) -> list[dict[str, Any]]:
        assert self._spec is not None
        stats: dict[int, dict[str, Any]] = {}
        if self._direct is not None:  # from now on a reader thread collects its STATS
            idx = self._spec.num_stages - 1
            self._readers.append(spawn(self._read_loop, idx, self._direct, name=f"src-recv-{idx}"))
            self._direct = None
        for idx in sorted(self._conns, reverse=True):
            conn = self._conns[idx]
            try:
                send_control(conn.sock, MsgType.END, session_id=self._spec.session_id)
            except OSError as exc:
                raise StageError(f"{conn.name}: could not end the session: {exc}") from None
            self._events.wait_stats(idx, stats, timeout=self._spec.timeout_s, name=conn.name, address=self._address)
        self.close()
        return [stats[i] for i in sorted(stats)]

    def close(self) -> None:
        """Close every connection and join the reader threads (closing wakes them)."""
        self._events.closed = True
        for conn in self._conns.values():
            _shutdown(conn.sock)
        readers, self._readers = self._readers, []
        lingering = join(readers, READER_JOIN_S)
        if lingering:
            log.warning("reader threads did not stop within %g s: %s", READER_JOIN_S, ", ".join(lingering))


# --------------------------------------------------------------------------- stage side


class _BufferPool:
    """Preallocated input buffers of exactly the expected shape, grown lazily up to `cap`."""

    def __init__(self, shape: Sequence[int], dtype: str, *, pin: bool, cap: int) -> None:
        import torch

        self._shape, self._dtype, self._pin, self._cap = tuple(shape), getattr(torch, dtype), pin, cap
        self._buffers: list[Any] = []
        self._views: list[memoryview] = []
        self._free: list[int] = []
        self._cond = threading.Condition()

    def acquire(self) -> tuple[int, Any, memoryview]:
        import torch

        with self._cond:
            while not self._free and len(self._buffers) >= self._cap:
                self._cond.wait()
            if self._free:
                slot = self._free.pop()
            else:
                buf = torch.empty(self._shape, dtype=self._dtype, pin_memory=self._pin)
                self._buffers.append(buf)
                self._views.append(_tensor_bytes(buf))
                slot = len(self._buffers) - 1
            return slot, self._buffers[slot], self._views[slot]

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()


class TcpStageLink(StageLink):
    def __init__(self, spec: SessionSpec, info: StageInfo, *, up: _Conn, down: _Conn, ctrl: _Conn, pin: bool) -> None:
        self.spec, self.info = spec, info
        self._up, self._down, self._ctrl = up, down, ctrl
        self._pool = _BufferPool(info.in_shape, info.dtype, pin=pin, cap=spec.window + 2)
        self._in_bytes = nbytes(info.in_shape, info.dtype)
        codec = parse_codec(spec.codec)
        self._codec = codec
        self._decoder = Decoder(codec, info.in_shape)
        # the codec applies at every split; the logits return to the source uncoded
        self._encoder = Encoder(codec if spec.next_address else CODEC_NONE)
        self._ended = False
        self._abort: str | None = None
        up.sock.settimeout(spec.timeout_s)
        if ctrl is not up:
            self._watcher: threading.Thread | None = spawn(self._watch_ctrl, name="stage-ctrl")
        else:
            self._watcher = None

    def _watch_ctrl(self) -> None:
        """Ctrl is a separate connection: END ends the session, EOF aborts it.

        The socket keeps its timeout (for the last stage it also carries the results back, and a
        send must not block forever); an idle receive timeout just means "no END yet"."""
        while True:
            try:
                self._ctrl.reader.control([MsgType.END])
                self._ended = True
            except ReceiveTimeout as exc:
                if exc.got == 0:
                    continue
                self._abort = f"the source's control connection failed: {exc}"
            except (TransportError, OSError) as exc:
                self._abort = f"the source's control connection failed: {exc}"
            break
        try:
            self._up.sock.shutdown(socket.SHUT_RD)  # wake the reader
        except OSError:
            pass

    def recv(self) -> InBatch | None:
        up = self._up
        try:
            hdr = up.reader.header()
        except ReceiveTimeout as exc:
            raise TransportError(f"no batch from {up.name} within {self.spec.timeout_s:g} s") from exc
        except (PeerClosed, OSError) as exc:
            if self._ended:
                return None
            raise TransportError(self._abort or f"{up.name}: {exc}") from None
        if hdr.msg_type == MsgType.END and self._up is self._ctrl:
            self._ended = True
            return None
        if hdr.msg_type != MsgType.DATA:
            raise ProtocolError(f"{up.name} sent {hdr.msg_type.name} during the session")
        if hdr.session_id != self.spec.session_id:
            raise ProtocolError(f"{up.name} sent a batch of session {hdr.session_id}, not {self.spec.session_id}")
        if hdr.shape != self.info.in_shape or hdr.dtype != self.info.dtype:
            raise ProtocolError(
                f"{up.name} sent {shape_str(hdr.dtype or '?', hdr.shape)} ({hdr.length} bytes) but stage "
                f"{self.spec.stage_index} expects {shape_str(self.info.dtype, self.info.in_shape)}"
            )
        if hdr.codec_id != self._codec.wire_id:
            raise ProtocolError(f"{up.name} sent a batch with codec id {hdr.codec_id}; the session negotiated "
                                f"{self._codec.name} (id {self._codec.wire_id})")
        self._decoder.check_length(hdr.length)  # before anything is received for it
        records = up.reader.records(hdr)
        slot, tensor, view = self._pool.acquire()
        try:
            decode_s = recv_decoded(up.reader, hdr, self._decoder, tensor, view)
        except CodecError as exc:
            self._pool.release(slot)
            raise CodecError(f"batch {hdr.batch_id} from {up.name}: {exc}") from None
        except BaseException:
            self._pool.release(slot)
            raise
        t_arrived = time.monotonic()
        transfer = t_arrived - decode_s - (hdr.t_send - up.offset)
        return InBatch(hdr.batch_id, tensor, records, transfer, hdr.length, t_arrived, slot,
                       raw_bytes=self._in_bytes, encode_s=hdr.t_aux, decode_s=decode_s)

    def release(self, batch: InBatch) -> None:
        self._pool.release(batch.slot)

    def send(self, batch_id: int, tensor: Any, records: Sequence[StageRecord], t_ready: float) -> float:
        t_start = time.monotonic()
        mine = records[-1]
        records = [*records[:-1], replace(mine, queue_s=mine.queue_s + (t_start - t_ready))]
        try:
            send_encoded(self._down.sock, self._encoder, tensor, records, session_id=self.spec.session_id,
                         batch_id=batch_id)
        except OSError as exc:
            raise TransportError(f"sending batch {batch_id} to {self._down.name} failed: {exc}") from None
        return t_start


# --------------------------------------------------------------------------- worker server


@dataclass
class _Session:
    spec: SessionSpec
    peer: str
    info: StageInfo | None = None
    up: _Conn | None = None
    error: str | None = None
    conns: list[_Conn] = field(default_factory=list)  # to the source and downstream

    def __post_init__(self) -> None:
        self.joined = threading.Event()


class TcpStageServer:
    """Accepts connections, authenticates them and runs one session at a time."""

    def __init__(self, address: str, handler: StageHandler, *, token: bytes | None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, codecs: Sequence[Codec] | None = None) -> None:
        from paretopipe.codecs import available_codecs

        self.address = address
        self._handler = handler
        self._token = token
        self.codecs = tuple(codecs) if codecs else tuple(parse_codec(n) for n in available_codecs())
        self._max = max_frame_bytes
        self._busy = threading.Lock()
        self._session: _Session | None = None
        self._pending = threading.BoundedSemaphore(MAX_PENDING_CONNECTIONS)
        self._sock = listen(address)
        self.port = self._sock.getsockname()[1]

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        handlers: list[threading.Thread] = []
        self._sock.settimeout(0.5)
        log.info("listening on %s (token auth %s)", self.address, "on" if self._token else "off")
        try:
            while not stop.is_set():
                try:
                    conn, peer_addr = self._sock.accept()
                except TimeoutError:
                    continue
                peer = f"{peer_addr[0]}:{peer_addr[1]}"
                if not self._pending.acquire(blocking=False):
                    log.warning("refused %s: too many connections waiting to identify themselves", peer)
                    conn.close()
                    continue
                handlers = [t for t in handlers if t.is_alive()]
                handlers.append(spawn(self._handle, conn, peer, name=f"conn-{peer}"))
        finally:
            self._sock.close()
            self._stop_sessions(handlers)

    def _stop_sessions(self, handlers: list[threading.Thread]) -> None:
        """On the way out: end the session in progress (its sockets closed, so its threads
        wake up) and join the connection threads, within a bounded wait."""
        session = self._session
        if session is not None:
            for conn in (session.up, *session.conns):
                if conn is not None:
                    try:  # shut, not closed: the session's own thread closes what it uses
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        lingering = join(handlers, READER_JOIN_S)
        if lingering:
            log.warning("connection threads did not stop within %g s: %s", READER_JOIN_S, ", ".join(lingering))

    def _handle(self, sock: socket.socket, peer: str) -> None:
        handed_over = released = False
        try:
            _tune(sock)
            sock.settimeout(PREAMBLE_TIMEOUT_S)
            reader = FrameReader(sock, max_frame_bytes=self._max)
            server_auth(sock, reader, self._token)
            while True:
                hdr, raw = reader.control([MsgType.PING, MsgType.HELLO, MsgType.JOIN])
                if hdr.msg_type == MsgType.PING:
                    send_control(sock, MsgType.PONG, t_send=time.monotonic())
                    continue
                obj = parse_json(raw, hdr.msg_type)
                # The connection has identified itself: it no longer counts as pending.
                self._pending.release()
                released = True
                if hdr.msg_type == MsgType.JOIN:
                    handed_over = self._join(_Conn(sock, reader, f"upstream {peer}"), obj)
                    return
                handed_over = True  # _run_session closes it
                self._run_session(_Conn(sock, reader, f"the source ({peer})"), obj)
                return
        except AuthError as exc:
            log.warning("refused %s: authentication failed: %s", peer, exc)
        except ProtocolError as exc:
            log.warning("refused %s: protocol error: %s", peer, exc)
            _try_send(sock, MsgType.REFUSED, {"reason": f"protocol error: {exc}"})
        except ReceiveTimeout as exc:
            log.warning("refused %s: %s", peer, exc)
        except PeerClosed as exc:
            log.warning("refused %s: %s", peer, exc)
        except (TransportError, OSError) as exc:
            log.warning("connection from %s failed: %s", peer, exc)
        finally:
            if not released:
                self._pending.release()
            if not handed_over:
                _shutdown(sock)

    def _join(self, conn: _Conn, obj: dict[str, Any]) -> bool:
        session = self._session
        try:
            sid, shape, dtype = int(obj["session_id"]), tuple(int(d) for d in obj["shape"]), str(obj["dtype"])
            offset, from_stage = float(obj["clock_offset_s"]), int(obj["from_stage"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed JOIN: {exc!r}") from None
        if session is None or session.spec.session_id != sid or session.info is None or session.joined.is_set():
            _try_send(conn.sock, MsgType.REFUSED, {"reason": f"no session {sid} is waiting for its upstream stage on {self.address}"})
            log.warning("refused JOIN from %s for session %d: no such session waiting", conn.name, sid)
            return False
        info = session.info
        if shape != info.in_shape or dtype != info.dtype:
            reason = (f"shape mismatch between stage {from_stage} ({obj.get('address', conn.name)}, sends "
                      f"{shape_str(dtype, shape)}) and stage {info.index} ({self.address}, expects {shape_str(info.dtype, info.in_shape)})")
            _try_send(conn.sock, MsgType.REFUSED, {"reason": reason})
            session.error = reason
            session.joined.set()
            return False
        send_json(conn.sock, MsgType.JOINED, {"stage": info.index})
        conn.name = f"stage {from_stage} ({obj.get('address', conn.name)})"
        conn.offset = -offset  # JOIN carries (our clock - their clock) as they measured it; store theirs - ours
        session.up = conn
        session.joined.set()
        return True

    def _connect_next(self, spec: SessionSpec, info: StageInfo) -> _Conn:
        assert spec.next_address is not None
        nxt = spec.stage_index + 1
        name = f"stage {nxt} ({spec.next_address})"
        sock = connect(spec.next_address, deadline=time.monotonic() + spec.timeout_s, what=f"stage {nxt}")
        sock.settimeout(spec.timeout_s)
        conn = _Conn(sock, FrameReader(sock, max_frame_bytes=self._max), name)
        try:
            client_auth(sock, conn.reader, self._token, peer=name)
            conn.offset = _measure_offset(sock, conn.reader)
            send_json(sock, MsgType.JOIN, {
                "session_id": spec.session_id, "from_stage": spec.stage_index, "address": self.address,
                "shape": list(info.out_shape), "dtype": info.dtype, "clock_offset_s": conn.offset,
            })
            conn.reader.control([MsgType.JOINED])
        except TransportError as exc:
            _shutdown(sock)
            raise StageError(f"{name} refused stage {spec.stage_index}: {exc}") from None
        return conn

    def _refuse_codec(self, ctrl: _Conn, spec: SessionSpec) -> bool:
        """Refuse a session whose codec this worker does not take (REFUSED names both sides)."""
        reason = codec_refusal(spec, self.codecs, peer=ctrl.name, me=self.address)
        if reason is None:
            return False
        log.warning("refused session %d: %s", spec.session_id, reason)
        _try_send(ctrl.sock, MsgType.REFUSED, {"reason": reason})
        _shutdown(ctrl.sock)
        return True

    def _run_session(self, ctrl: _Conn, obj: dict[str, Any]) -> None:
        spec = SessionSpec.from_json(obj)
        if self._refuse_codec(ctrl, spec):
            return
        # A session that just ended may still be closing its sockets: give it a moment.
        if not self._busy.acquire(timeout=BUSY_GRACE_S):
            cur = self._session
            reason = (f"worker {self.address} is busy with session {cur.spec.session_id if cur else '?'} from "
                      f"{cur.peer if cur else '?'}; it serves one session at a time")
            log.warning("refused session %d from %s: busy", spec.session_id, ctrl.name)
            _try_send(ctrl.sock, MsgType.REFUSED, {"reason": reason})
            _shutdown(ctrl.sock)
            return
        session = _Session(spec, ctrl.name, conns=[ctrl])
        self._session = session
        down: _Conn | None = None
        link: TcpStageLink | None = None
        t0 = time.monotonic()
        log.info("session %d from %s: stage %d of %d, %s splits %s, batch %d",
                 spec.session_id, ctrl.name, spec.stage_index, spec.num_stages, spec.model, list(spec.splits), spec.batch_size)
        try:
            ctrl.sock.settimeout(spec.timeout_s)
            info = self._handler.prepare(spec)
            info = replace(info, address=self.address)
            if spec.next_address:
                down = self._connect_next(spec, info)
                session.conns.append(down)
            session.info = info
            send_json(ctrl.sock, MsgType.READY, info.to_json(), session_id=spec.session_id)
            if spec.stage_index == 1:
                up = ctrl
                up.offset = -float(obj.get("upstream_clock_offset_s") or 0.0)
            else:
                # every upstream stage builds its module before it joins: give each its timeout
                wait = spec.timeout_s * (spec.stage_index - 1) + spec.timeout_s
                if not session.joined.wait(wait):
                    raise StageError(f"stage {spec.stage_index - 1} never connected within {wait:g} s")
                if session.error or session.up is None:
                    raise StageError(session.error or "upstream stage failed to join")
                up = session.up
            link = TcpStageLink(spec, info, up=up, down=down or ctrl, ctrl=ctrl, pin=self._handler.pin_memory)
            stats = self._handler.run(link)
            send_json(ctrl.sock, MsgType.STATS, stats, session_id=spec.session_id)
            log.info("session %d done: %d batches in %.2f s", spec.session_id, stats.get("batches", 0), time.monotonic() - t0)
        except Exception as exc:  # the worker outlives any one session
            _abort_session(ctrl, spec, exc)
        finally:
            for conn in {id(c): c for c in (ctrl, down, session.up) if c is not None}.values():
                _shutdown(conn.sock)
            if link is not None and join([link._watcher], READER_JOIN_S):
                log.warning("session %d: the control watcher did not stop within %g s", spec.session_id, READER_JOIN_S)
            self._session = None
            self._busy.release()


def _abort_session(ctrl: _Conn, spec: SessionSpec, exc: Exception) -> None:
    """Log why a session ended early and tell the source, best effort; the worker keeps serving.

    A package error is expected (a failed peer, a bad frame); an OSError means the source is gone,
    so there is no one to tell; anything else (e.g. out of memory in the model) is logged with
    its traceback and reported by type.
    """
    if isinstance(exc, ParetoPipeError):
        log.warning("session %d aborted: %s", spec.session_id, exc)
        _try_send(ctrl.sock, MsgType.ERROR, {"stage": spec.stage_index, "message": str(exc)})
    elif isinstance(exc, OSError):
        log.warning("session %d aborted: %s", spec.session_id, exc)
    else:
        log.error("session %d aborted by an unexpected error", spec.session_id, exc_info=exc)
        _try_send(ctrl.sock, MsgType.ERROR, {"stage": spec.stage_index, "message": f"{type(exc).__name__}: {exc}"})


def _try_send(sock: socket.socket, msg_type: MsgType, obj: dict[str, Any]) -> None:
    try:
        send_json(sock, msg_type, obj)
    except OSError:
        pass


def serve(address: str, handler: StageHandler, *, token: bytes | None, stop: threading.Event | None = None,
          max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, codecs: Sequence[Codec] | None = None) -> None:
    TcpStageServer(address, handler, token=token, max_frame_bytes=max_frame_bytes, codecs=codecs).serve_forever(stop)
