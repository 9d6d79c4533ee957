"""The PyTorch RPC backend: torch.distributed.rpc over TensorPipe, for comparison with ours.

**RPC pickles by design** (arguments, records and the function to call travel as pickles): run
it on trusted networks only. Our TCP backend (:mod:`.tcp`) is the one without pickle.

Wiring of a session with N stages. The source is rank 0 (RPC name ``source``), stage i is rank i
(``stage<i>``); each stage forwards to the next rank directly and the last rank returns the
logits to rank 0, so no transfer is doubled through a master::

    source ──rpc_async──▶ stage 1 ──rpc_async──▶ … ──▶ stage N-1 ──rpc_async──▶ source
       ╰─── control (our framing, no pickle): HELLO/READY/JOIN/END/STATS/ERROR ───╯

Before any RPC exists the source opens a *control* connection to each worker's ``--listen``
address (the same address as for TCP, with the same optional token auth): it measures the clock
offset (min-RTT ping), sends the session spec (HELLO), collects each stage's shapes (READY) and
checks the chain, and only then tells every stage to JOIN the RPC group: the master (a TCPStore
on the source: MASTER_ADDR / MASTER_PORT, default: the source's address on the control
connection and a free port), the stage's rank, the world size and its upstream clock offset.
The control connection then carries END (the session is over), STATS and ERROR, and its EOF
tells a worker that the source is gone. The control channel is also the end-of-session barrier:
a stage leaves the RPC group (``rpc.shutdown``) once its last send was acknowledged and it sent
STATS, the source once all STATS arrived; then the worker waits for the next session. The
source reuses its master store for a later session on the same port in the same process.

TensorPipe is limited to its TCP transport (``uv``) and ``basic`` channel, so it crosses the
same network path as our TCP backend (on one host it would otherwise switch to shared memory and
bypass any shaped link). Its interface comes from TP_SOCKET_IFNAME / GLOO_SOCKET_IFNAME when set,
else it is the interface holding the address this process is reached on (``lo`` for 127.0.0.1),
which also avoids TensorPipe's hostname lookup picking a loopback address on hosts whose name
resolves to 127.0.1.1.

Each batch travels as one ``rpc_async(next, _deliver, (session, batch, tensor, records,
t_send))``; the receiver stamps its arrival, so records and transfer times are the same as the
TCP backend's. A sender waits for the call's acknowledgement before it reuses its buffer.
docs/rpc.md has the details and the measured overhead against TCP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import operator
import os
import queue
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

from paretopipe.codecs import NONE as CODEC_NONE
from paretopipe.codecs import Codec, CodecError, Decoder, Encoder, codec_from_wire, parse_codec
from paretopipe.errors import ConfigError, ParetoPipeError, StageError, TransportError
from paretopipe.transport.base import (
    InBatch, ResultBatch, SessionPlan, SessionSpec, StageHandler, StageInfo, StageLink,
)
from paretopipe.threads import join, spawn
from paretopipe.transport.tcp import (
    READER_JOIN_S, TcpSourceLink, TcpStageServer, _abort_session, _Conn, _measure_offset, _shutdown, _try_send, connect,
    parse_address,
)
from paretopipe.wire import (
    DEFAULT_MAX_FRAME_BYTES, FrameReader, MsgType, ProtocolError, StageRecord, client_auth, send_json,
    shape_str,
)

log = logging.getLogger(__name__)

#: Environment variables this backend reads.
ENV_MASTER_ADDR, ENV_MASTER_PORT = "MASTER_ADDR", "MASTER_PORT"
ENV_TP_IFNAME, ENV_GLOO_IFNAME = "TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"
SOURCE_NAME = "source"
#: Seconds a new session waits for the previous one to leave its RPC group before it is refused.
BUSY_GRACE_S = 5.0
_SCHEME = "paretopipe"


def _stage_name(rank: int) -> str:
    return f"stage{rank}"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RpcOptions:
    """Where the RPC group meets and which interface TensorPipe / Gloo use (None: automatic)."""

    master_addr: str | None = None
    master_port: int | None = None
    tp_ifname: str | None = None
    gloo_ifname: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RpcOptions:
        env = os.environ if environ is None else environ
        port_text = env.get(ENV_MASTER_PORT) or None
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise ConfigError(f"{ENV_MASTER_PORT}={port_text!r} is not a port number (0..65535; 0 = any free port)")
            port = int(port_text) or None
        return cls(master_addr=env.get(ENV_MASTER_ADDR) or None, master_port=port,
                   tp_ifname=env.get(ENV_TP_IFNAME) or None, gloo_ifname=env.get(ENV_GLOO_IFNAME) or None)


def apply_cli_options(*, backend: str, master: str | None = None, ifname: str | None = None) -> None:
    """`--rpc-master HOST[:PORT]` / `--rpc-ifname IFACE`: set the environment this backend reads
    (MASTER_ADDR/MASTER_PORT, TP_SOCKET_IFNAME/GLOO_SOCKET_IFNAME), which processes the command
    starts (a sweep's workers and sources) inherit."""
    if backend != "rpc":
        given = [flag for flag, value in (("--rpc-master", master), ("--rpc-ifname", ifname)) if value]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ConfigError(f"{' and '.join(given)} only {verb} to --backend rpc (got --backend {backend})")
        return
    if master:
        if master.startswith("["):  # [IPv6] or [IPv6]:PORT
            host, _, rest = master[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else ("x" if rest else "")
        elif master.count(":") == 1:
            host, _, port = master.partition(":")
        else:  # a name, IPv4, or a bare IPv6 address
            host, port = master, ""
        if not host or (port and (not port.isdigit() or int(port) > 65535)):
            raise ConfigError(f"--rpc-master {master!r}: expected HOST or HOST:PORT, e.g. 10.0.0.1:29400")
        os.environ[ENV_MASTER_ADDR] = host
        if port:
            os.environ[ENV_MASTER_PORT] = port
    if ifname:
        os.environ[ENV_TP_IFNAME] = os.environ[ENV_GLOO_IFNAME] = ifname


def interface_for_address(address: str) -> str:
    """The network interface holding `address` (exact match first, then the subnet holding it)."""
    import psutil

    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(address, None)[0][4][0])
        except (socket.gaierror, ValueError) as exc:
            raise ConfigError(f"cannot resolve {address!r} to pick a network interface: {exc}") from None
    if ip.is_unspecified:
        raise ConfigError(f"{address} is not one interface's address; set {ENV_TP_IFNAME} (and {ENV_GLOO_IFNAME})")
    subnet_match = None
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                own = ipaddress.ip_address(a.address.split("%")[0])
            except ValueError:
                continue
            if own == ip:
                return name
            if subnet_match is None and a.netmask and own.version == ip.version:
                try:
                    if ip in ipaddress.ip_network(f"{own}/{a.netmask}", strict=False):
                        subnet_match = name
                except ValueError:
                    pass
    if subnet_match is not None:
        return subnet_match
    raise ConfigError(f"no network interface of this host holds {address}; set {ENV_TP_IFNAME} and {ENV_GLOO_IFNAME}")


@contextlib.contextmanager
def _interface_env(tp_ifname: str, gloo_ifname: str) -> Iterator[None]:
    """TensorPipe and Gloo read their interface from the environment while RPC initialises."""
    saved = {k: os.environ.get(k) for k in (ENV_TP_IFNAME, ENV_GLOO_IFNAME)}
    os.environ[ENV_TP_IFNAME], os.environ[ENV_GLOO_IFNAME] = tp_ifname, gloo_ifname
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- rendezvous
#
# torch's tcp:// rendezvous waits up to 30 minutes for missing ranks and a master store it makes
# outlives rpc.shutdown in the process, so the port cannot be bound again. We make the store
# ourselves (with our timeouts, one per session namespace) and hand it to init_rpc through a
# rendezvous scheme of our own.

_PENDING_STORES: dict[str, Any] = {}
_MASTER_STORES: dict[tuple[str, int], Any] = {}
_REGISTERED = False
_RPC_LOCK = threading.Lock()  # one RPC group per process at a time


def _rendezvous_handler(url: str, timeout: Any = None, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    yield _PENDING_STORES.pop(query["key"]), int(query["rank"]), int(query["world_size"])
    raise TransportError("the RPC group cannot re-rendezvous; start a new session")


#: What this backend uses of torch.distributed.rpc beyond its public API (see _init_rpc and
#: _rpc_initialised); torch 2.11 and 2.14, which this backend has run with, have them.
_TORCH_INTERNALS = ("_init_counter_lock", "_init_counter", "api._all_gather_sequence_id", "api._is_current_rpc_agent_set")


def require_rpc_support() -> None:
    """ConfigError, naming what is missing, unless this torch can run the rpc backend."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.rpc.is_available()):
        raise ConfigError(f"this torch ({torch.__version__}) was built without torch.distributed.rpc; "
                          "use --backend tcp, or a torch build with distributed support")
    from torch.distributed import rpc

    missing = []
    for name in _TORCH_INTERNALS:
        try:
            operator.attrgetter(name)(rpc)
        except AttributeError:
            missing.append(f"rpc.{name}")
    if missing:
        raise ConfigError(f"the rpc backend needs torch.distributed.rpc internals that this torch ({torch.__version__}) "
                          f"lacks: {', '.join(missing)}; use --backend tcp, or a torch that has them (2.11 and 2.14 do)")


def _register_scheme() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from torch.distributed.rendezvous import register_rendezvous_handler

        register_rendezvous_handler(_SCHEME, _rendezvous_handler)
        _REGISTERED = True


def _master_store(host: str, port: int | None, timeout_s: float) -> Any:
    """The TCPStore this source hosts for its RPC group; reused per (host, port) in this process."""
    import torch.distributed as dist

    key = (host, port or 0)
    if port and key in _MASTER_STORES:
        store = _MASTER_STORES[key]
        store.set_timeout(timedelta(seconds=timeout_s))
        return store
    try:
        store = dist.TCPStore(host, port or 0, None, True, timedelta(seconds=timeout_s), wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:
        text = str(exc)
        if "EADDRINUSE" in text or "already in use" in text:
            raise ConfigError(f"RPC master port {port} on {host} is already in use; set {ENV_MASTER_PORT} to a free "
                              f"port (or unset it to pick one)") from None
        raise ConfigError(f"cannot host the RPC master on {host}:{port or 0}: {text.splitlines()[0]}") from None
    _MASTER_STORES[(host, int(store.port))] = store
    return store


def _session_store(store: Any, session_id: int) -> Any:
    import torch.distributed as dist

    return dist.PrefixStore(f"paretopipe/{session_id}", store)


def _init_rpc(name: str, rank: int, world_size: int, store: Any, *, session_id: int, timeout_s: float,
              tp_ifname: str, gloo_ifname: str) -> None:
    from torch.distributed import rpc

    _register_scheme()
    key = f"{session_id}-{rank}"
    _PENDING_STORES[key] = store
    opts = rpc.TensorPipeRpcBackendOptions(
        init_method=f"{_SCHEME}://rendezvous?key={key}", rpc_timeout=timeout_s,
        _transports=["uv"], _channels=["basic"],
    )
    # torch numbers a process's init_rpc calls (a store key prefix) and its all-gathers (used while
    # initialising) per process, so a long-lived worker and a fresh source would disagree. Every
    # session has its own store namespace, so all members can start both counts at 0 and agree.
    with rpc._init_counter_lock:
        rpc._init_counter = 0
    rpc.api._all_gather_sequence_id.clear()
    try:
        with _interface_env(tp_ifname, gloo_ifname), warnings.catch_warnings():
            # torch's own RPC start-up uses a Gloo group in a way torch itself deprecates
            warnings.filterwarnings("ignore", message="You are using a Backend", category=UserWarning)
            rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=opts)
    finally:
        _PENDING_STORES.pop(key, None)


def _leave_rpc() -> str | None:
    """Leave the RPC group locally; returns the reason when torch complained.

    Not ``rpc.shutdown(graceful=True)``: its barrier counts calls per process in C++, so a
    long-lived worker and a fresh source disagree and wait for the timeout. Our control channel
    is the barrier instead: a stage leaves after its last send was acknowledged and it has sent
    STATS, and the source leaves once every stage's STATS arrived, so no call is in flight."""
    from torch.distributed import rpc

    if not _rpc_initialised():
        return None
    try:
        rpc.shutdown(graceful=False)
    except Exception as exc:  # noqa: BLE001 - RPC raises plain RuntimeErrors
        return _first_line(exc)
    return None


def _rpc_initialised() -> bool:
    from torch.distributed.rpc import api

    return bool(api._is_current_rpc_agent_set())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- the remote calls

_ACTIVE: _Endpoint | None = None  # the source link or the stage link of this process's session


@dataclass(frozen=True)
class _Coded:
    """How a batch's tensor was encoded: (codec wire id, int8 scale, int8 zero point, encode s)."""

    codec_id: int = 0
    scale: float = 1.0
    zero_point: int = 0
    encode_s: float = 0.0


class _Endpoint:
    session_id: int

    def deliver(self, batch_id: int, tensor: Any, records: list[StageRecord], t_send: float, t_arrived: float,
                coded: _Coded) -> None:
        raise NotImplementedError


def _deliver(session_id: int, batch_id: int, tensor: Any, records: list[tuple[Any, ...]],
             t_send: float, coded: tuple[int, float, int, float] = (0, 1.0, 0, 0.0)) -> None:
    """Runs on the receiving rank: hand a batch (or the logits) to this process's session."""
    t_arrived = time.monotonic()
    ep = _ACTIVE
    if ep is None or ep.session_id != session_id:
        raise RuntimeError(f"no session {session_id} on this rank")
    ep.deliver(batch_id, tensor, [StageRecord(*r) for r in records], t_send, t_arrived, _Coded(*coded))


def _send_batch(to: str, session_id: int, batch_id: int, tensor: Any, records: Sequence[StageRecord],
                timeout_s: float, encoder: Encoder | None = None) -> float:
    """One batch to the next rank, encoded with `encoder`'s codec (None: raw); waits for the
    acknowledgement (the tensor may then be reused). Returns the time before encoding."""
    import torch
    from torch.distributed import rpc

    t_start = time.monotonic()
    coded = (0, 1.0, 0, 0.0)
    if encoder is not None and encoder.codec != CODEC_NONE:
        enc = encoder.encode(tensor)
        payload = torch.empty(len(enc.payload), dtype=torch.uint8)  # RPC sends tensors, not buffers
        memoryview(payload.numpy())[:] = enc.payload
        tensor, coded = payload, (enc.codec.wire_id, enc.scale, enc.zero_point, enc.encode_s)
    recs = [r.as_tuple() for r in records]
    rpc.rpc_async(to, _deliver, args=(session_id, batch_id, tensor, recs, time.monotonic(), coded),
                  timeout=timeout_s).wait()
    return t_start


def _decode_rpc(decoder: Decoder, tensor: Any, coded: _Coded, *, sender: str) -> tuple[Any, float]:
    """An RPC-delivered payload (a uint8 tensor) decoded into a new float32 tensor; the codec and
    every size checked first, as the TCP receiver does."""
    import torch

    codec = codec_from_wire(coded.codec_id)
    if codec != decoder.codec:
        raise ProtocolError(f"{sender} sent codec {codec.name}; the session negotiated {decoder.codec.name}")
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ProtocolError(f"{sender} sent an encoded payload as {tensor.dtype}[{tensor.dim()} dims], not uint8 bytes")
    decoder.check_length(int(tensor.numel()))
    out = torch.empty(decoder.shape, dtype=torch.float32)
    return out, decoder.decode(memoryview(tensor.numpy()), coded.scale, coded.zero_point, out)


def _tensor_nbytes(tensor: Any) -> int:
    return int(tensor.nelement() * tensor.element_size())


# --------------------------------------------------------------------------- source side


@contextlib.contextmanager
def _handshake(name: str) -> Iterator[None]:
    try:
        yield
    except ParetoPipeError as exc:
        raise StageError(f"{name}: {exc}") from None
    except OSError as exc:
        raise StageError(f"{name}: connection failed during the handshake: {exc}") from None


class RpcSourceLink(TcpSourceLink, _Endpoint):
    """The TCP source link's control side (events, failure diagnosis, recv) with an RPC data path."""

    def __init__(self, options: RpcOptions | None = None, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__(max_frame_bytes=max_frame_bytes)
        self._options = options
        self._in_rpc = False
        self._return_offset = 0.0
        self.master = ""

    # -- open
    def open(self, plan: SessionPlan) -> list[StageInfo]:
        global _ACTIVE
        options = self._options or RpcOptions.from_env()
        spec = plan.spec
        self._spec, self._logits_shape = spec, tuple(plan.logits_shape)
        self.session_id = spec.session_id
        n = spec.num_stages
        if len(plan.addresses) != n - 1:
            raise ConfigError(f"{n - 1} stage addresses needed for splits {list(spec.splits)}, got {len(plan.addresses)}")
        deadline = time.monotonic() + plan.connect_timeout_s
        offsets = {0: 0.0}
        for idx in range(1, n):
            addr = plan.addresses[idx - 1]
            name = f"stage {idx} ({addr})"
            sock = connect(addr, deadline=deadline, what=f"stage {idx}")
            conn = _Conn(sock, FrameReader(sock, max_frame_bytes=self._max), name)
            self._conns[idx] = conn
            with _handshake(name):
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                client_auth(sock, conn.reader, plan.token, peer=name)
                conn.offset = _measure_offset(sock, conn.reader)
                offsets[idx] = conn.offset
                stage_spec = plan.stage_spec(idx)
                send_json(sock, MsgType.HELLO, stage_spec.to_json(), session_id=spec.session_id)
        for idx, conn in self._conns.items():  # the stages build in parallel; collect their answers
            with _handshake(conn.name):
                conn.sock.settimeout(spec.timeout_s + plan.connect_timeout_s)
                _, answer = conn.reader.control_json([MsgType.READY])
            self._infos[idx] = StageInfo.from_json(answer, address=plan.addresses[idx - 1])
        self._check_chain(plan)
        self._return_offset = offsets[n - 1]
        for idx, conn in self._conns.items():  # the TCP link's reader: STATS, ERROR, EOF
            conn.sock.settimeout(spec.timeout_s)
            self._readers.append(spawn(self._read_loop, idx, conn, name=f"src-ctrl-{idx}"))

        # -- the RPC group
        first = self._conns[1].sock
        host = options.master_addr or first.getsockname()[0]
        tp_ifname = options.tp_ifname or interface_for_address(host)
        gloo_ifname = options.gloo_ifname or tp_ifname
        init_timeout = plan.connect_timeout_s  # for the group to form, after the stages were built
        if not _RPC_LOCK.acquire(timeout=init_timeout):
            raise TransportError("another RPC session is still active in this process")
        self._in_rpc = True
        master = _master_store(host, options.master_port, spec.timeout_s)
        self.master = f"{host}:{master.port}"
        store = _session_store(master, spec.session_id)
        for idx, conn in self._conns.items():
            join = {"master": self.master, "rank": idx, "world_size": n, "init_timeout_s": init_timeout,
                    "upstream_clock_offset_s": offsets[idx - 1] - offsets[idx]}
            try:
                send_json(conn.sock, MsgType.JOIN, join, session_id=spec.session_id)
            except OSError as exc:
                raise StageError(f"{conn.name}: could not send JOIN: {exc}") from None
        self._wait_arrivals(store, init_timeout)
        _ACTIVE = self
        try:
            _init_rpc(SOURCE_NAME, 0, n, store, session_id=spec.session_id, timeout_s=spec.timeout_s,
                      tp_ifname=tp_ifname, gloo_ifname=gloo_ifname)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / DistError
            try:  # a stage that failed to join says why on its control connection
                raise self._failure(self._events.get(1.0)) from None
            except queue.Empty:
                raise TransportError(f"the RPC group at {self.master} did not form: {_first_line(exc)}") from None
        log.debug("RPC group formed at %s (%s, interface %s)", self.master, n, tp_ifname)
        return [self._infos[i] for i in range(1, n)]

    def _check_chain(self, plan: SessionPlan) -> None:
        spec, n = plan.spec, plan.spec.num_stages
        first, last = self._infos[1], self._infos[n - 1]
        if first.in_shape != tuple(plan.head_out_shape) or first.dtype != spec.dtype:
            raise StageError(
                f"shape mismatch between the source (sends {shape_str(spec.dtype, plan.head_out_shape)}) and "
                f"stage 1 ({first.address}, expects {shape_str(first.dtype, first.in_shape)})")
        for i in range(1, n - 1):
            a, b = self._infos[i], self._infos[i + 1]
            if a.out_shape != b.in_shape or a.dtype != b.dtype:
                raise StageError(
                    f"shape mismatch between stage {i} ({a.address}, sends {shape_str(a.dtype, a.out_shape)}) and "
                    f"stage {i + 1} ({b.address}, expects {shape_str(b.dtype, b.in_shape)})")
        if last.out_shape != tuple(plan.logits_shape):
            raise StageError(
                f"shape mismatch between stage {n - 1} ({last.address}, returns {shape_str(last.dtype, last.out_shape)}) "
                f"and the source (expects logits {shape_str(spec.dtype, plan.logits_shape)}; num_classes={spec.num_classes})")

    def _wait_arrivals(self, store: Any, timeout_s: float) -> None:
        """Wait until every stage has reached the master store, or report who did not (or why)."""
        deadline = time.monotonic() + timeout_s
        missing = set(self._conns)
        while missing:
            try:
                kind, idx, item = self._events.get(0.05)
            except queue.Empty:
                pass
            else:
                raise self._failure((kind, idx, item))
            missing = {i for i in missing if not store.check([f"arrived/{i}"])}
            if missing and time.monotonic() > deadline:
                names = ", ".join(f"stage {i} ({self._infos[i].address})" for i in sorted(missing))
                raise StageError(f"{names} did not reach the RPC master at {self.master} within {timeout_s:g} s; is it "
                                 f"an address of this host that the workers can reach, with the port open? (set it "
                                 f"with --rpc-master or {ENV_MASTER_ADDR}/{ENV_MASTER_PORT})")

    # -- data path
    def deliver(self, batch_id: int, tensor: Any, records: list[StageRecord], t_send: float, t_arrived: float,
                coded: _Coded) -> None:
        if coded.codec_id != CODEC_NONE.wire_id:
            self._events.put("error", len(self._conns), f"returned encoded logits (codec id {coded.codec_id}); "
                                                         f"logits return uncoded")
            return
        if tuple(tensor.shape) != self._logits_shape:
            self._events.put("error", len(self._conns), f"returned logits {tuple(tensor.shape)}, expected {self._logits_shape}")
            return
        transfer = t_arrived - (t_send - self._return_offset)
        nbytes = _tensor_nbytes(tensor)
        self._events.put("result", 0, ResultBatch(batch_id, tensor, records, transfer, nbytes, t_arrived,
                                                  return_raw_bytes=nbytes, return_encode_s=coded.encode_s))

    def send(self, batch_id: int, tensor: Any) -> float:
        assert self._spec is not None
        if self._encoder is None:
            self._encoder = Encoder(parse_codec(self._spec.codec))
        try:
            return _send_batch(_stage_name(1), self._spec.session_id, batch_id, tensor, (), self._spec.timeout_s,
                               self._encoder)
        except Exception as exc:  # noqa: BLE001 - RPC errors are RuntimeErrors
            raise self._failure(("eof", 1, f"sending batch {batch_id} over RPC failed: {_first_line(exc)}")) from None

    def _leave(self) -> str | None:
        global _ACTIVE
        if not self._in_rpc:
            return None
        try:
            return _leave_rpc()
        finally:
            if _ACTIVE is self:
                _ACTIVE = None
            self._in_rpc = False
            _RPC_LOCK.release()

    def close(self) -> None:
        """Also the end of :meth:`finish` (inherited: END to each stage, wait for its STATS).

        The source leaves the RPC group first and then hangs up, which is the stages' cue to leave."""
        reason = self._leave()
        super().close()
        if reason:
            log.warning("leaving the RPC group: %s", reason)


# --------------------------------------------------------------------------- stage side


_END = object()


class RpcStageLink(StageLink, _Endpoint):
    def __init__(self, spec: SessionSpec, info: StageInfo, *, upstream_offset: float, ctrl: _Conn) -> None:
        self.spec, self.info = spec, info
        self.session_id = spec.session_id
        self._offset = upstream_offset  # upstream clock minus ours
        self._ctrl = ctrl
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._next = _stage_name(spec.stage_index + 1) if spec.stage_index < spec.num_stages - 1 else SOURCE_NAME
        self._upstream = "the source" if spec.stage_index == 1 else f"stage {spec.stage_index - 1}"
        self.ended = False
        codec = parse_codec(spec.codec)
        self._decoder = Decoder(codec, info.in_shape)
        # the codec applies at every split; the logits return to the source uncoded
        self._encoder = Encoder(codec if self._next != SOURCE_NAME else CODEC_NONE)

    def watch_control(self) -> None:
        """END ends the session; EOF or garbage on the control connection aborts it."""
        self._ctrl.sock.settimeout(None)
        try:
            self._ctrl.reader.control([MsgType.END])
            self.ended = True
            self._inbox.put(_END)
        except (TransportError, OSError) as exc:
            self._inbox.put(TransportError(f"the source's control connection failed: {exc}"))

    def deliver(self, batch_id: int, tensor: Any, records: list[StageRecord], t_send: float, t_arrived: float,
                coded: _Coded) -> None:
        wire_bytes, decode_s = _tensor_nbytes(tensor), 0.0
        if coded.codec_id != CODEC_NONE.wire_id or self._decoder.codec != CODEC_NONE:
            try:
                tensor, decode_s = _decode_rpc(self._decoder, tensor, coded, sender=self._upstream)
            except (CodecError, ProtocolError) as exc:
                # the session's error, reported by the stage loop; the worker serves the next one
                self._inbox.put(type(exc)(f"batch {batch_id} from {self._upstream}: {exc}"))
                return
        if tuple(tensor.shape) != self.info.in_shape or str(tensor.dtype).removeprefix("torch.") != self.info.dtype:
            raise RuntimeError(f"{self._upstream} sent {shape_str(str(tensor.dtype).removeprefix('torch.'), tuple(tensor.shape))} "
                               f"but stage {self.spec.stage_index} expects {shape_str(self.info.dtype, self.info.in_shape)}")
        transfer = t_arrived - (t_send - self._offset)
        self._inbox.put(InBatch(batch_id, tensor, records, transfer, wire_bytes, t_arrived + decode_s,
                                raw_bytes=_tensor_nbytes(tensor), encode_s=coded.encode_s, decode_s=decode_s))

    def recv(self) -> InBatch | None:
        try:
            item = self._inbox.get(timeout=self.spec.timeout_s)
        except queue.Empty:
            raise TransportError(f"no batch from {self._upstream} within {self.spec.timeout_s:g} s") from None
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, batch: InBatch) -> None:
        """Nothing to give back: RPC allocated the tensor for this batch."""

    def send(self, batch_id: int, tensor: Any, records: Sequence[StageRecord], t_ready: float) -> float:
        mine = records[-1]
        waited = time.monotonic() - t_ready
        records = [*records[:-1], replace(mine, queue_s=mine.queue_s + waited)]
        try:
            return _send_batch(self._next, self.spec.session_id, batch_id, tensor, records, self.spec.timeout_s,
                               self._encoder)
        except Exception as exc:  # noqa: BLE001 - RPC errors are RuntimeErrors
            raise TransportError(f"sending batch {batch_id} to {self._next} over RPC failed: {_first_line(exc)}") from None


# --------------------------------------------------------------------------- worker server


class RpcStageServer(TcpStageServer):
    """The TCP worker's server (accept, token auth, clock pings) running RPC sessions.

    A session's control connection arrives like a TCP session's; what differs is the session
    itself (:meth:`_run_session`). A TCP data connection (JOIN as the first message) is refused:
    stages of an RPC session reach each other over RPC."""

    def __init__(self, address: str, handler: StageHandler, *, token: bytes | None,
                 options: RpcOptions | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 codecs: Sequence[Codec] | None = None) -> None:
        super().__init__(address, handler, token=token, max_frame_bytes=max_frame_bytes, codecs=codecs)
        self._options = options or RpcOptions.from_env()
        self._rpc_busy = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._current: tuple[int, str] | None = None

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        log.info("backend rpc: stages talk over torch.distributed.rpc, which pickles; trusted networks only")
        super().serve_forever(stop)

    def _join(self, conn: _Conn, obj: dict[str, Any]) -> bool:
        _try_send(conn.sock, MsgType.REFUSED, {"reason": f"worker {self.address} runs the rpc backend; "
                                                         f"start every worker of a chain with the same --backend"})
        log.warning("refused a TCP data connection from %s: this worker runs the rpc backend", conn.name)
        return False

    def _run_session(self, ctrl: _Conn, obj: dict[str, Any]) -> None:
        try:
            self._session_rpc(ctrl, obj)
        finally:
            _shutdown(ctrl.sock)  # wakes the session's control watcher, joined here
            watcher, self._watcher = self._watcher, None
            if join([watcher], READER_JOIN_S):
                log.warning("the session's control watcher did not stop within %g s", READER_JOIN_S)

    def _session_rpc(self, ctrl: _Conn, obj: dict[str, Any]) -> None:
        spec = SessionSpec.from_json(obj)
        if self._refuse_codec(ctrl, spec):
            return
        if not self._rpc_busy.acquire(timeout=BUSY_GRACE_S):  # a moment for a session that is leaving
            sid, peer = self._current or (0, "?")
            log.warning("refused session %d from %s: busy", spec.session_id, ctrl.name)
            _try_send(ctrl.sock, MsgType.REFUSED, {"reason": f"worker {self.address} is busy with session {sid} from "
                                                             f"{peer}; it serves one session at a time"})
            return
        global _ACTIVE
        self._current = (spec.session_id, ctrl.name)
        in_group = False
        t0 = time.monotonic()
        log.info("session %d from %s: stage %d of %d, %s splits %s, batch %d (rpc)", spec.session_id, ctrl.name,
                 spec.stage_index, spec.num_stages, spec.model, list(spec.splits), spec.batch_size)
        try:
            ctrl.sock.settimeout(spec.timeout_s)
            info = replace(self._handler.prepare(spec), address=self.address)
            send_json(ctrl.sock, MsgType.READY, info.to_json(), session_id=spec.session_id)
            _, join = ctrl.reader.control_json([MsgType.JOIN])
            if not _RPC_LOCK.acquire(timeout=spec.timeout_s):
                raise StageError(f"stage {spec.stage_index}: this process is still in another RPC group")
            in_group = True
            link = self._enter_group(spec, info, ctrl, join)
            self._watcher = spawn(link.watch_control, name="stage-ctrl")
            stats = self._handler.run(link)
            send_json(ctrl.sock, MsgType.STATS, stats, session_id=spec.session_id)
            _await_hangup(ctrl.sock, spec.timeout_s)
            reason = _leave_rpc()
            if reason:
                log.warning("session %d: leaving the RPC group: %s", spec.session_id, reason)
            log.info("session %d done: %d batches in %.2f s", spec.session_id, stats.get("batches", 0), time.monotonic() - t0)
        except Exception as exc:  # the worker outlives any one session
            _abort_session(ctrl, spec, exc)
        finally:
            if in_group:
                _leave_rpc()  # a no-op after a clean exit
                _ACTIVE = None
                _RPC_LOCK.release()
            self._current = None
            self._rpc_busy.release()

    def _enter_group(self, spec: SessionSpec, info: StageInfo, ctrl: _Conn, join: dict[str, Any]) -> RpcStageLink:
        """Enter the session's RPC group as rank `spec.stage_index`."""
        global _ACTIVE
        import torch.distributed as dist

        try:
            master, rank, world = str(join["master"]), int(join["rank"]), int(join["world_size"])
            init_timeout, offset = float(join["init_timeout_s"]), float(join["upstream_clock_offset_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed JOIN: {exc!r}") from None
        if rank != spec.stage_index or world != spec.num_stages:
            raise ProtocolError(f"JOIN as rank {rank} of {world} does not fit stage {spec.stage_index} of {spec.num_stages}")
        host, port = parse_address(master)
        local = ctrl.sock.getsockname()[0]
        tp_ifname = self._options.tp_ifname or interface_for_address(local)
        gloo_ifname = self._options.gloo_ifname or tp_ifname
        link = RpcStageLink(spec, info, upstream_offset=offset, ctrl=ctrl)
        try:
            client = dist.TCPStore(host, port, None, False, timedelta(seconds=init_timeout))
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"stage {rank} could not reach the RPC master at {master} within {init_timeout:.0f} s "
                                 f"({_first_line(exc)}); give the source an address this worker can reach "
                                 f"(--rpc-master or {ENV_MASTER_ADDR})") from None
        store = _session_store(client, spec.session_id)
        del client
        _ACTIVE = link
        store.set(f"arrived/{rank}", b"1")
        try:
            _init_rpc(_stage_name(rank), rank, world, store, session_id=spec.session_id, timeout_s=spec.timeout_s,
                      tp_ifname=tp_ifname, gloo_ifname=gloo_ifname)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / DistError
            raise TransportError(f"stage {rank} could not join the RPC group at {master}: {_first_line(exc)}") from None
        log.info("session %d: joined the RPC group at %s as rank %d of %d (interface %s)",
                 spec.session_id, master, rank, world, tp_ifname)
        return link


def _await_hangup(sock: socket.socket, timeout_s: float) -> None:
    """Wait until the source closes the control connection (it has left the RPC group by then)."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def serve(address: str, handler: StageHandler, *, token: bytes | None, stop: threading.Event | None = None,
          max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, codecs: Sequence[Codec] | None = None) -> None:
    RpcStageServer(address, handler, token=token, max_frame_bytes=max_frame_bytes, codecs=codecs).serve_forever(stop)
