"""The control plane both backends share, over our framing (:mod:`.wire`, no pickle).

Every session starts the same way whatever carries its tensors: the source opens a control
connection to each stage's ``--listen`` address, authenticates (optional token), measures the
clock offset (min-RTT ping), sends the session spec (HELLO), collects each stage's shapes
(READY) and checks that the chain fits together; at the end it sends END and collects STATS.
A stage reports a failure with ERROR, and the EOF of a control connection tells either side
that the other is gone. On the worker, one accept loop admits connections fairly
(:mod:`.admission`), authenticates them, answers pings, refuses a second session while one runs, and turns whatever a session raises into an
ERROR for the source while the worker keeps serving.

This module is that common part, for the backends to compose:

- :class:`SourceControl`: the source's control connections and what it hears on them;
- :class:`ControlServer`: a worker's accept loop, calling a backend's :class:`SessionRunner`
  for the session itself (its data path: :mod:`.tcp` or :mod:`.rpc`).

docs/protocol.md has the message sequence.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from paretopipe.codecs import Codec, available_codecs, parse_codec
from paretopipe.errors import ConfigError, ParetoPipeError, StageError, TransportError
from paretopipe.polling import poll_until
from paretopipe.threads import join, spawn
from paretopipe.transport.admission import Limits, Pending, PendingTable
from paretopipe.transport.base import ResultBatch, SessionPlan, SessionSpec, StageHandler, StageInfo
from paretopipe.transport.events import Event, StageEvents
from paretopipe.transport.wire import (
    AuthError, FrameReader, Header, MsgType, PeerClosed, ProtocolError, ReceiveTimeout, RefusalCode, Refused,
    client_auth, parse_json, send_control, send_json, send_refused, server_auth, shape_str,
)

log = logging.getLogger(__name__)

# The admission rules' defaults (admission.py has them and why):
#: seconds from accept a fresh connection gets to authenticate and say what it wants (HELLO/JOIN);
PREAMBLE_TIMEOUT_S = Limits.preamble_timeout_s
#: seconds from accept it gets to complete AUTH (silence and a byte a second both run out);
AUTH_TIMEOUT_S = Limits.auth_timeout_s
#: not-yet-identified connections in all (when full, the heaviest address's oldest is evicted);
MAX_PENDING_CONNECTIONS = Limits.total
#: and from one peer address (more from it are refused: too_many_pending).
MAX_PENDING_PER_PEER = Limits.per_peer
#: How often the accept loop wakes to expire pending connections past their deadlines.
ACCEPT_TICK_S = 0.25
#: Listen backlog: a burst of connections waits in the kernel for the accept loop, not refused.
LISTEN_BACKLOG = 128
#: The longest pause between a source's retries while a worker says it should wait.
MAX_RETRY_PAUSE_S = 1.0
#: A worker logs the refusals of one address at the accept loop at most this often (a flood
#: would otherwise cost a log line per connection); the rest are counted in the next line.
REFUSAL_LOG_S = 5.0
#: How often a waiting source repeats that it is waiting.
WAIT_LOG_S = 10.0
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


def tune(sock: socket.socket) -> None:
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
    sock.listen(LISTEN_BACKLOG)
    return sock


def connect(address: str, *, deadline: float, what: str, bind: str | None = None) -> socket.socket:
    """Connect (from local address `bind`, if given), retrying with exponential backoff until
    `deadline` (monotonic)."""
    host, port = parse_address(address)
    last: OSError | None = None

    def attempt() -> socket.socket | None:
        nonlocal last
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            return socket.create_connection((host, port), timeout=min(remaining, 5.0),
                                            source_address=(bind, 0) if bind else None)
        except OSError as exc:
            if bind and exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"cannot connect from {bind}: it is not an address of this host; "
                                  f"give one of its own addresses to --source-address, or leave it out") from None
            last = exc
            return None

    sock = poll_until(attempt, deadline - time.monotonic(), interval_s=0.05, backoff=2.0, max_interval_s=1.0)
    if sock is None:
        raise TransportError(f"could not connect to {what} at {address}: {last.strerror if last else 'timed out'} (gave up after retrying; is `paretopipe stage serve` running there?)")
    tune(sock)
    return sock


def shutdown(sock: socket.socket | None) -> None:
    """Shut a socket both ways (waking any thread blocked on it) and close it."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def try_send(sock: socket.socket, msg_type: MsgType, obj: dict[str, Any]) -> None:
    """Send a JSON control message, best effort (the peer may be gone)."""
    try:
        send_json(sock, msg_type, obj)
    except OSError:
        pass


def measure_offset(sock: socket.socket, reader: FrameReader) -> float:
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


@dataclass
class Conn:
    sock: socket.socket
    reader: FrameReader
    name: str  # e.g. "stage 2 (10.0.0.3:29500)" or "the source (10.0.0.1:51234)"
    offset: float = 0.0  # peer clock minus our clock


def authenticate(sock: socket.socket, *, name: str, token: bytes | None, timeout_s: float,
                 max_frame_bytes: int) -> Conn:
    """A fresh connection to a worker (`name`), authenticated and with its clock offset
    measured; on any failure the socket is closed and the error raised for the caller to name."""
    conn = Conn(sock, FrameReader(sock, max_frame_bytes=max_frame_bytes), name)
    try:
        sock.settimeout(timeout_s)
        client_auth(sock, conn.reader, token, peer=name)
        conn.offset = measure_offset(sock, conn.reader)
    except BaseException:
        shutdown(sock)
        raise
    return conn


def admitted(address: str, *, name: str, what: str, deadline: float, token: bytes | None, max_frame_bytes: int,
             bind: str | None = None) -> Conn:
    """Connect to a worker and authenticate (:func:`connect`, :func:`authenticate`), retrying
    with backoff until `deadline` while the worker says that waiting can help (a pending-
    connection limit), and saying so in the log. Any other refusal (busy, wrong token) is
    raised at once; so is the last "wait" once the deadline has passed, with how long it waited."""
    t0 = time.monotonic()
    pause, last_log = 0.05, -WAIT_LOG_S
    told: Refused | None = None  # the last "wait" the worker said

    def give_up(exc: Refused) -> Refused:
        return Refused(f"{exc.reason} (gave up after waiting {time.monotonic() - t0:.1f} s, the connect timeout)",
                       exc.code, exc.detail)

    while True:
        try:
            sock = connect(address, deadline=deadline, what=what, bind=bind)
        except TransportError:
            if told is not None:  # out of time between tries: what stopped us is the refusal
                raise give_up(told) from None
            raise
        try:
            return authenticate(sock, name=name, token=token, timeout_s=max(1.0, deadline - time.monotonic()),
                                max_frame_bytes=max_frame_bytes)
        except Refused as exc:
            if not exc.code.retryable:
                raise
            told, now = exc, time.monotonic()
            hint = exc.retry_after_s
            wait = pause if hint is None else max(pause, min(hint, MAX_RETRY_PAUSE_S))
            if now + wait >= deadline:
                raise give_up(exc) from None
            if now - last_log >= WAIT_LOG_S:
                log.warning("%s: waiting, the worker turned us away: %s (retrying for up to %.0f s more)",
                            name, exc.reason, deadline - now)
                last_log = now
            time.sleep(wait)
            pause = min(pause * 2, MAX_RETRY_PAUSE_S)


def await_end(ctrl: Conn) -> str | None:
    """Wait on a stage's control connection for END. None when it came; else why the connection
    failed. An idle receive timeout only means "no END yet"."""
    while True:
        try:
            ctrl.reader.control([MsgType.END])
            return None
        except ReceiveTimeout as exc:
            if exc.got == 0:
                continue
            return f"the source's control connection failed: {exc}"
        except (TransportError, OSError) as exc:
            return f"the source's control connection failed: {exc}"


# --------------------------------------------------------------------------- source side


@contextlib.contextmanager
def handshake(name: str) -> Iterator[None]:
    """Errors while setting up a session with `name`, as StageErrors naming it."""
    try:
        yield
    except ParetoPipeError as exc:
        raise StageError(f"{name}: {exc}") from None
    except OSError as exc:
        raise StageError(f"{name}: connection failed during the handshake: {exc}") from None


class SourceControl:
    """The source's control connections to stages 1..N-1, and what it hears on them.

    A backend's source link calls :meth:`hello` and :meth:`ready` per stage in the order its
    wiring needs, :meth:`check_chain` once all answered, then :meth:`watch` each connection (a
    reader thread turns STATS, ERROR and EOF, and with `on_data` results too, into events);
    :meth:`finish` ends the session and :meth:`close` drops it."""

    def __init__(self, *, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.conns: dict[int, Conn] = {}
        self.infos: dict[int, StageInfo] = {}
        self.events = StageEvents()
        self._spec: SessionSpec | None = None
        self._readers: list[threading.Thread] = []

    @property
    def spec(self) -> SessionSpec:
        if self._spec is None:
            raise StageError("the session is not open")
        return self._spec

    def begin(self, plan: SessionPlan) -> float:
        """Check the plan; the deadline (monotonic) for connecting to every stage."""
        spec, n = plan.spec, plan.spec.num_stages
        if len(plan.addresses) != n - 1:
            raise ConfigError(f"{n - 1} stage addresses needed for splits {list(spec.splits)}, got {len(plan.addresses)}")
        self._spec = spec
        return time.monotonic() + plan.connect_timeout_s

    def hello(self, idx: int, plan: SessionPlan, *, deadline: float, token: bytes | None) -> Conn:
        """Connect to stage `idx`, authenticate, measure the clock offset and send its HELLO."""
        addr = plan.addresses[idx - 1]
        name = f"stage {idx} ({addr})"
        with handshake(name):
            conn = admitted(addr, name=name, what=f"stage {idx}", deadline=deadline, token=token,
                            max_frame_bytes=self.max_frame_bytes, bind=plan.source_address)
            self.conns[idx] = conn
            hello = plan.stage_spec(idx).to_json()
            hello["upstream_clock_offset_s"] = conn.offset if idx == 1 else None
            send_json(conn.sock, MsgType.HELLO, hello, session_id=plan.spec.session_id)
        return conn

    def ready(self, idx: int, plan: SessionPlan) -> StageInfo:
        """Stage `idx`'s READY answer (it builds its module first: that takes a while)."""
        conn = self.conns[idx]
        with handshake(conn.name):
            conn.sock.settimeout(plan.spec.timeout_s + plan.connect_timeout_s)
            _, answer = conn.reader.control_json([MsgType.READY])
        info = StageInfo.from_json(answer, address=plan.addresses[idx - 1])
        self.infos[idx] = info
        conn.sock.settimeout(plan.spec.timeout_s)
        return info

    def check_chain(self, plan: SessionPlan) -> list[StageInfo]:
        """The stages' answers in order, once each tensor is what the next side expects."""
        spec, n = plan.spec, plan.spec.num_stages
        first, last = self.infos[1], self.infos[n - 1]
        if first.in_shape != tuple(plan.head_out_shape) or first.dtype != spec.dtype:
            raise StageError(
                f"shape mismatch between the source (sends {shape_str(spec.dtype, plan.head_out_shape)}) and "
                f"stage 1 ({first.address}, expects {shape_str(first.dtype, first.in_shape)})")
        for i in range(1, n - 1):
            a, b = self.infos[i], self.infos[i + 1]
            if a.out_shape != b.in_shape or a.dtype != b.dtype:
                raise StageError(
                    f"shape mismatch between stage {i} ({a.address}, sends {shape_str(a.dtype, a.out_shape)}) and "
                    f"stage {i + 1} ({b.address}, expects {shape_str(b.dtype, b.in_shape)})")
        if last.out_shape != tuple(plan.logits_shape):
            raise StageError(
                f"shape mismatch between stage {n - 1} ({last.address}, returns {shape_str(last.dtype, last.out_shape)}) "
                f"and the source (expects logits {shape_str(spec.dtype, plan.logits_shape)}; num_classes={spec.num_classes})")
        return [self.infos[i] for i in range(1, n)]

    # -- what the stages say
    def watch(self, idx: int, on_data: Callable[[Conn, Header], ResultBatch] | None = None) -> None:
        """A reader thread on stage `idx`'s connection: STATS, ERROR and EOF become events, and
        DATA frames too when `on_data` reads them (into a result); otherwise DATA is an error."""
        kind = "recv" if on_data else "ctrl"
        self._readers.append(spawn(self._read_loop, idx, self.conns[idx], on_data, name=f"src-{kind}-{idx}"))

    def _read_loop(self, idx: int, conn: Conn, on_data: Callable[[Conn, Header], ResultBatch] | None) -> None:
        try:
            while True:
                try:
                    hdr = conn.reader.header()
                except ReceiveTimeout as exc:
                    if exc.got == 0:
                        continue  # idle; recv() enforces the result timeout
                    raise
                if hdr.msg_type == MsgType.DATA and on_data is not None:
                    self.events.put("result", idx, on_data(conn, hdr))
                elif not self.events.on_control(idx, hdr, conn.reader):
                    raise ProtocolError(f"unexpected {hdr.msg_type.name} frame")
        except (TransportError, OSError) as exc:
            self.events.on_reader_exit(idx, exc)

    def address(self, idx: int) -> str | None:
        return self.infos[idx].address if idx in self.infos else None

    def failure(self, first: Event) -> StageError:
        """The root cause of a failed session, naming the stage (see :class:`StageEvents`)."""
        return self.events.failure(first, self.address)

    def no_result(self, timeout: float) -> StageError:
        return StageError(
            f"no result from the chain within {timeout:g} s (receive timeout); stages: "
            + ", ".join(f"{i} at {info.address}" for i, info in sorted(self.infos.items())))

    def next_result(self, timeout: float) -> ResultBatch:
        """The next result a reader thread delivered; a failure instead raises naming the stage."""
        try:
            kind, idx, item = self.events.get(timeout)
        except queue.Empty:
            raise self.no_result(timeout) from None
        if kind == "result":
            return item
        raise self.failure((kind, idx, item))

    # -- the end
    def finish(self) -> list[dict[str, Any]]:
        """END to every stage, last first, each answering with its STATS. The connections stay
        open: the caller closes them (the RPC source leaves its group first)."""
        spec = self.spec
        stats: dict[int, dict[str, Any]] = {}
        for idx in sorted(self.conns, reverse=True):
            conn = self.conns[idx]
            try:
                send_control(conn.sock, MsgType.END, session_id=spec.session_id)
            except OSError as exc:
                raise StageError(f"{conn.name}: could not end the session: {exc}") from None
            self.events.wait_stats(idx, stats, timeout=spec.timeout_s, name=conn.name, address=self.address)
        return [stats[i] for i in sorted(stats)]

    def close(self) -> None:
        """Close every connection and join the reader threads (closing wakes them); idempotent."""
        self.events.closed = True
        for conn in self.conns.values():
            shutdown(conn.sock)
        readers, self._readers = self._readers, []
        lingering = join(readers, READER_JOIN_S)
        if lingering:
            log.warning("reader threads did not stop within %g s: %s", READER_JOIN_S, ", ".join(lingering))


# --------------------------------------------------------------------------- worker side


@dataclass
class Session:
    """The session a worker is serving."""

    spec: SessionSpec
    ctrl: Conn  # the source's control connection
    info: StageInfo | None = None  # set by the runner once the stage is ready for its upstream
    conns: list[Conn] = field(default_factory=list)  # every other connection the session uses
    threads: list[threading.Thread] = field(default_factory=list)  # joined when the session ends

    def describe(self) -> str:
        run = f"run {self.spec.run_id}" if self.spec.run_id else "no run id given"
        return f"session {self.spec.session_id} ({run}) from {self.ctrl.name}"


class SessionRunner(Protocol):
    """What a backend adds to the control server: the session itself."""

    backend: str

    def run(self, session: Session, info: StageInfo, hello: dict[str, Any]) -> dict[str, Any]:
        """Run a session whose stage was built (`info`): send READY, carry the batches, send
        STATS; return the stats. Whatever it raises is reported to the source."""
        ...

    def join(self, conn: Conn, obj: dict[str, Any], session: Session | None) -> bool:
        """A connection whose first message is JOIN; True if the session took it over."""
        ...

    def close(self, session: Session) -> None:
        """After the session, whether it succeeded or not, before its connections are closed."""
        ...


class ControlServer:
    """A worker's accept loop: authenticates connections, answers pings and runs one session
    at a time through its backend's :class:`SessionRunner`."""

    def __init__(self, address: str, handler: StageHandler, runner: SessionRunner, *, token: bytes | None,
                 max_frame_bytes: int, codecs: Sequence[Codec] | None = None, limits: Limits | None = None) -> None:
        self.address = address
        self.token = token
        self.max_frame_bytes = max_frame_bytes
        self.codecs = tuple(codecs) if codecs else tuple(parse_codec(n) for n in available_codecs())
        self._handler = handler
        self._runner = runner
        self._busy = threading.Lock()
        self._session: Session | None = None
        self._pending = PendingTable(limits)
        self._sock = listen(address)
        self.port = self._sock.getsockname()[1]
        self._refusal_log: dict[str, tuple[float, int]] = {}  # host -> (last logged, refused since)

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        handlers: list[threading.Thread] = []
        self._sock.settimeout(ACCEPT_TICK_S)
        log.info("listening on %s (token auth %s)", self.address, "on" if self.token else "off")
        try:
            while not stop.is_set():
                try:
                    conn, peer_addr = self._sock.accept()
                except TimeoutError:
                    conn = None
                now = time.monotonic()
                self._wake(self._pending.expire(now))
                if conn is None:
                    continue
                peer = f"{peer_addr[0]}:{peer_addr[1]}"
                admission = self._pending.admit(peer_addr[0], peer, now, conn)
                self._wake(admission.evicted)
                if admission.entry is None:
                    assert admission.code is not None
                    self._log_refusal(peer_addr[0], peer, admission.reason, now)
                    conn.settimeout(0.5)  # a few hundred bytes into an empty send buffer: never blocks
                    send_refused(conn, admission.code, admission.reason, retry_after_s=admission.retry_after_s)
                    conn.close()
                    continue
                handlers = [t for t in handlers if t.is_alive()]
                handlers.append(spawn(self._handle, conn, admission.entry, name=f"conn-{peer}"))
        finally:
            self._sock.close()
            self._stop_sessions(handlers)

    def _log_refusal(self, host: str, peer: str, reason: str, now: float) -> None:
        last, since = self._refusal_log.get(host, (-REFUSAL_LOG_S, 0))
        if now - last < REFUSAL_LOG_S:
            self._refusal_log[host] = (last, since + 1)
            return
        more = f" ({since} more from {host} refused in the last {now - last:.0f} s)" if since else ""
        log.warning("refused %s: %s%s", peer, reason, more)
        self._refusal_log[host] = (now, 0)
        if len(self._refusal_log) > 4096:  # many addresses: forget the quiet ones
            self._refusal_log = {h: v for h, v in self._refusal_log.items() if now - v[0] < REFUSAL_LOG_S}

    @staticmethod
    def _wake(dropped: Sequence[Pending]) -> None:
        """Wake the threads of connections the table dropped: their receive returns, and each
        thread tells its peer why (``Pending.dropped``) and closes the connection itself."""
        for entry in dropped:
            try:
                entry.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def _stop_sessions(self, handlers: list[threading.Thread]) -> None:
        """On the way out: end the session in progress (its sockets shut, so its threads wake
        up) and join the connection threads, within a bounded wait."""
        session = self._session
        if session is not None:
            for conn in (session.ctrl, *session.conns):
                try:  # shut, not closed: the session's own thread closes what it uses
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        lingering = join(handlers, READER_JOIN_S)
        if lingering:
            log.warning("connection threads did not stop within %g s: %s", READER_JOIN_S, ", ".join(lingering))

    def _handle(self, sock: socket.socket, entry: Pending) -> None:
        handed_over = False
        peer = entry.peer
        try:
            tune(sock)
            # A backstop: the table's deadlines, counted from accept, end a slow preamble first.
            sock.settimeout(self._pending.limits.preamble_timeout_s)
            reader = FrameReader(sock, max_frame_bytes=self.max_frame_bytes)
            server_auth(sock, reader, self.token)
            self._pending.authenticated(entry)
            while True:
                hdr, raw = reader.control([MsgType.PING, MsgType.HELLO, MsgType.JOIN])
                if hdr.msg_type == MsgType.PING:
                    send_control(sock, MsgType.PONG, t_send=time.monotonic())
                    continue
                obj = parse_json(raw, hdr.msg_type)
                # The connection has identified itself: it no longer counts as pending.
                if not self._pending.identified(entry):
                    raise PeerClosed("dropped")  # the table gave up on it a moment ago: refuse below
                if hdr.msg_type == MsgType.JOIN:
                    handed_over = self._runner.join(Conn(sock, reader, f"upstream {peer}"), obj, self._session)
                    return
                handed_over = True  # _run_session closes it
                self._run_session(Conn(sock, reader, f"the source ({peer})"), obj)
                return
        except Exception as exc:
            self._preamble_failed(sock, entry, exc)
            if not isinstance(exc, (TransportError, OSError)):
                raise
        finally:
            self._pending.leave(entry)
            if not handed_over:
                shutdown(sock)

    @staticmethod
    def _preamble_failed(sock: socket.socket, entry: Pending, exc: Exception) -> None:
        """Log why a connection ended before it identified itself and, where it helps, tell it."""
        peer = entry.peer
        if entry.dropped is not None:  # the table gave up on it (deadline, eviction): whatever the socket said
            code, reason = entry.dropped
            log.warning("refused %s: %s", peer, reason)
            send_refused(sock, code, reason)
        elif isinstance(exc, AuthError):
            log.warning("refused %s: authentication failed: %s", peer, exc)
        elif isinstance(exc, ProtocolError):
            log.warning("refused %s: protocol error: %s", peer, exc)
            send_refused(sock, RefusalCode.PROTOCOL, f"protocol error: {exc}")
        elif isinstance(exc, (ReceiveTimeout, PeerClosed)):
            log.warning("refused %s: %s", peer, exc)
        else:
            log.warning("connection from %s failed: %s", peer, exc)

    def _refuse(self, ctrl: Conn, code: RefusalCode, reason: str, **detail: Any) -> None:
        send_refused(ctrl.sock, code, reason, **detail)
        shutdown(ctrl.sock)

    def _run_session(self, ctrl: Conn, obj: dict[str, Any]) -> None:
        spec = SessionSpec.from_json(obj)
        reason = codec_refusal(spec, self.codecs, peer=ctrl.name, me=self.address)
        if reason is not None:
            log.warning("refused session %d: %s", spec.session_id, reason)
            self._refuse(ctrl, RefusalCode.CODEC, reason)
            return
        if not self._acquire():
            cur = self._session
            holder = cur.describe() if cur else "another session"
            log.warning("refused session %d from %s: busy with %s", spec.session_id, ctrl.name, holder)
            detail = ({"session_id": cur.spec.session_id, "run_id": cur.spec.run_id, "peer": cur.ctrl.name}
                      if cur else {})
            self._refuse(ctrl, RefusalCode.BUSY, f"worker {self.address} is busy with {holder}; it serves one session "
                                                 f"at a time", holder=detail)
            return
        session = Session(spec, ctrl)
        self._session = session
        t0 = time.monotonic()
        log.info("session %d from %s: stage %d of %d, %s splits %s, batch %d (%s)", spec.session_id, ctrl.name,
                 spec.stage_index, spec.num_stages, spec.model, list(spec.splits), spec.batch_size, self._runner.backend)
        try:
            ctrl.sock.settimeout(spec.timeout_s)
            info = replace(self._handler.prepare(spec), address=self.address)
            stats = self._runner.run(session, info, obj)
            log.info("session %d done: %d batches in %.2f s", spec.session_id, stats.get("batches", 0), time.monotonic() - t0)
        except Exception as exc:  # the worker outlives any one session
            abort_session(ctrl, spec, exc)
        finally:
            try:
                self._runner.close(session)
            finally:
                for conn in {id(c): c for c in (ctrl, *session.conns)}.values():
                    shutdown(conn.sock)
                if join(session.threads, READER_JOIN_S):
                    log.warning("session %d: the control watcher did not stop within %g s", spec.session_id, READER_JOIN_S)
                self._session = None
                self._busy.release()


    def _acquire(self) -> bool:
        """The worker, for a new session. While a session is in progress the HELLO is refused
        at once, and the source does not retry: two sweeps that collide are a mistake to show,
        not to wait out. A session that is over (its source hung up) but still closing its
        sockets is given a moment: a sweep's next run follows its last one closely."""
        if self._busy.acquire(blocking=False):
            return True
        cur = self._session
        if cur is not None and not _hung_up(cur.ctrl.sock):
            return False
        return self._busy.acquire(timeout=BUSY_GRACE_S)


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer closed `sock` (an EOF waits in it) or it is closed here; nothing is read."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


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


def abort_session(ctrl: Conn, spec: SessionSpec, exc: Exception) -> None:
    """Log why a session ended early and tell the source, best effort; the worker keeps serving.

    A package error is expected (a failed peer, a bad frame); an OSError means the source is gone,
    so there is no one to tell; anything else (e.g. out of memory in the model) is logged with
    its traceback and reported by type.
    """
    if isinstance(exc, ParetoPipeError):
        log.warning("session %d aborted: %s", spec.session_id, exc)
        try_send(ctrl.sock, MsgType.ERROR, {"stage": spec.stage_index, "message": str(exc)})
    elif isinstance(exc, OSError):
        log.warning("session %d aborted: %s", spec.session_id, exc)
    else:
        log.error("session %d aborted by an unexpected error", spec.session_id, exc_info=exc)
        try_send(ctrl.sock, MsgType.ERROR, {"stage": spec.stage_index, "message": f"{type(exc).__name__}: {exc}"})
