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

The control connection is :mod:`.control`, shared with the TCP backend; this module is the
data path (the remote calls), and :mod:`.rpc_group` holds what touches torch's RPC machinery
(options, the internals check, rendezvous, leaving). TensorPipe is limited to its TCP transport
(``uv``) and ``basic`` channel, so it crosses the same network path as our TCP backend. Its
interface comes from TP_SOCKET_IFNAME / GLOO_SOCKET_IFNAME when set,
else it is the interface holding the address this process is reached on (``lo`` for 127.0.0.1),
which also avoids TensorPipe's hostname lookup picking a loopback address on hosts whose name
resolves to 127.0.1.1.

Each batch travels as one ``rpc_async(next, _deliver, (session, batch, tensor, records,
t_send))``; the receiver stamps its arrival, so records and transfer times are the same as the
TCP backend's. A sender waits for the call's acknowledgement before it reuses its buffer.
docs/rpc.md has the details and the measured overhead against TCP.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from paretopipe.codecs import NONE as CODEC_NONE
from paretopipe.codecs import Codec, CodecError, Decoder, Encoder, codec_from_wire, parse_codec
from paretopipe.errors import StageError, TransportError
from paretopipe.polling import poll_until
from paretopipe.threads import spawn
from paretopipe.transport.base import (
    InBatch, ResultBatch, SessionPlan, SessionSpec, SourceLink, StageHandler, StageInfo, StageLink,
    StageRecord,
)
from paretopipe.transport.control import (
    Conn, ControlServer, Session, SourceControl, await_end, parse_address,
)
from paretopipe.transport.rpc_group import (
    ENV_MASTER_ADDR, ENV_MASTER_PORT, RPC_LOCK, RpcOptions, first_line, init_rpc, interface_for_address,
    leave_rpc, master_store, session_store,
)
from paretopipe.transport.wire import (
    DEFAULT_MAX_FRAME_BYTES, MsgType, ProtocolError, RefusalCode, send_json, send_refused, shape_str,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "source"


def _stage_name(rank: int) -> str:
    return f"stage{rank}"


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


class RpcSourceLink(SourceLink, _Endpoint):
    """The shared control plane (:class:`~.control.SourceControl`) with an RPC data path."""

    def __init__(self, options: RpcOptions | None = None, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._control = SourceControl(max_frame_bytes=max_frame_bytes)
        self._options = options
        self._logits_shape: tuple[int, ...] = ()
        self._in_rpc = False
        self._return_offset = 0.0
        self._encoder: Encoder | None = None  # the session's codec, made at the first send
        self.session_id = 0
        self.master = ""

    def open(self, plan: SessionPlan) -> list[StageInfo]:
        options = self._options or RpcOptions.from_env()
        control = self._control
        deadline = control.begin(plan)
        spec, n = plan.spec, plan.spec.num_stages
        self._logits_shape, self.session_id = tuple(plan.logits_shape), spec.session_id
        for idx in range(1, n):
            control.hello(idx, plan, deadline=deadline, token=plan.token)
        for idx in range(1, n):  # the stages build in parallel; collect their answers
            control.ready(idx, plan)
        infos = control.check_chain(plan)
        offsets = {0: 0.0, **{idx: conn.offset for idx, conn in control.conns.items()}}
        self._return_offset = offsets[n - 1]
        for idx in range(1, n):  # STATS, ERROR, EOF
            control.watch(idx)
        self._form_group(plan, options, offsets)
        return infos

    def _form_group(self, plan: SessionPlan, options: RpcOptions, offsets: dict[int, float]) -> None:
        """Host the master store, tell every stage to JOIN it, and enter the group as rank 0."""
        global _ACTIVE
        control, spec, n = self._control, plan.spec, plan.spec.num_stages
        host = options.master_addr or control.conns[1].sock.getsockname()[0]
        tp_ifname = options.tp_ifname or interface_for_address(host)
        gloo_ifname = options.gloo_ifname or tp_ifname
        init_timeout = plan.connect_timeout_s  # for the group to form, after the stages were built
        if not RPC_LOCK.acquire(timeout=init_timeout):
            raise TransportError("another RPC session is still active in this process")
        self._in_rpc = True
        master = master_store(host, options.master_port, spec.timeout_s)
        self.master = f"{host}:{master.port}"
        store = session_store(master, spec.session_id)
        for idx, conn in control.conns.items():
            join = {"master": self.master, "rank": idx, "world_size": n, "init_timeout_s": init_timeout,
                    "upstream_clock_offset_s": offsets[idx - 1] - offsets[idx]}
            try:
                send_json(conn.sock, MsgType.JOIN, join, session_id=spec.session_id)
            except OSError as exc:
                raise StageError(f"{conn.name}: could not send JOIN: {exc}") from None
        self._wait_arrivals(store, init_timeout)
        _ACTIVE = self
        try:
            init_rpc(SOURCE_NAME, 0, n, store, session_id=spec.session_id, timeout_s=spec.timeout_s,
                     tp_ifname=tp_ifname, gloo_ifname=gloo_ifname)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / DistError
            try:  # a stage that failed to join says why on its control connection
                raise control.failure(control.events.get(1.0)) from None
            except queue.Empty:
                raise TransportError(f"the RPC group at {self.master} did not form: {first_line(exc)}") from None
        log.debug("RPC group formed at %s (%s, interface %s)", self.master, n, tp_ifname)

    def _wait_arrivals(self, store: Any, timeout_s: float) -> None:
        """Wait until every stage has reached the master store, or report who did not (or why)."""
        control = self._control
        missing = set(control.conns)

        def all_arrived() -> bool:
            if missing:
                try:  # waits a little for a stage's word, which is the poll's pause
                    kind, idx, item = control.events.get(0.05)
                except queue.Empty:
                    pass
                else:
                    raise control.failure((kind, idx, item))
                missing.difference_update({i for i in missing if store.check([f"arrived/{i}"])})
            return not missing

        if not poll_until(all_arrived, timeout_s, interval_s=0.0):
            names = ", ".join(f"stage {i} ({control.infos[i].address})" for i in sorted(missing))
            raise StageError(f"{names} did not reach the RPC master at {self.master} within {timeout_s:g} s; is it "
                             f"an address of this host that the workers can reach, with the port open? (set it "
                             f"with --rpc-master or {ENV_MASTER_ADDR}/{ENV_MASTER_PORT})")

    # -- data path
    def deliver(self, batch_id: int, tensor: Any, records: list[StageRecord], t_send: float, t_arrived: float,
                coded: _Coded) -> None:
        events, last = self._control.events, len(self._control.conns)
        if coded.codec_id != CODEC_NONE.wire_id:
            events.put("error", last, f"returned encoded logits (codec id {coded.codec_id}); logits return uncoded")
            return
        if tuple(tensor.shape) != self._logits_shape:
            events.put("error", last, f"returned logits {tuple(tensor.shape)}, expected {self._logits_shape}")
            return
        transfer = t_arrived - (t_send - self._return_offset)
        nbytes = _tensor_nbytes(tensor)
        events.put("result", 0, ResultBatch(batch_id, tensor, records, transfer, nbytes, t_arrived,
                                            return_raw_bytes=nbytes, return_encode_s=coded.encode_s))

    def send(self, batch_id: int, tensor: Any) -> float:
        spec = self._control.spec
        if self._encoder is None:
            self._encoder = Encoder(parse_codec(spec.codec))
        try:
            return _send_batch(_stage_name(1), spec.session_id, batch_id, tensor, (), spec.timeout_s, self._encoder)
        except Exception as exc:  # noqa: BLE001 - RPC errors are RuntimeErrors
            raise self._control.failure(("eof", 1, f"sending batch {batch_id} over RPC failed: {first_line(exc)}")) from None

    def recv(self, timeout: float) -> ResultBatch:
        return self._control.next_result(timeout)

    def finish(self) -> list[dict[str, Any]]:
        """END to each stage, wait for its STATS, then :meth:`close`."""
        stats = self._control.finish()
        self.close()
        return stats

    def _leave(self) -> str | None:
        global _ACTIVE
        if not self._in_rpc:
            return None
        try:
            return leave_rpc()
        finally:
            if _ACTIVE is self:
                _ACTIVE = None
            self._in_rpc = False
            RPC_LOCK.release()

    def close(self) -> None:
        """The source leaves the RPC group first and then hangs up, which is the stages' cue to leave."""
        reason = self._leave()
        self._control.close()
        if reason:
            log.warning("leaving the RPC group: %s", reason)


# --------------------------------------------------------------------------- stage side


_END = object()


class RpcStageLink(StageLink, _Endpoint):
    def __init__(self, spec: SessionSpec, info: StageInfo, *, upstream_offset: float, ctrl: Conn) -> None:
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
        reason = await_end(self._ctrl)
        if reason is None:
            self.ended = True
            self._inbox.put(_END)
        else:
            self._inbox.put(TransportError(reason))

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
            raise TransportError(f"sending batch {batch_id} to {self._next} over RPC failed: {first_line(exc)}") from None


# --------------------------------------------------------------------------- worker server


class RpcStageServer:
    """A worker serving RPC sessions: the control server, with this backend's session.

    A session's control connection arrives as a TCP session's does; after READY it carries the
    JOIN that says where the RPC group meets. A TCP data connection (JOIN as the first message)
    is refused: stages of an RPC session reach each other over RPC."""

    backend = "rpc"

    def __init__(self, address: str, handler: StageHandler, *, token: bytes | None,
                 options: RpcOptions | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 codecs: Sequence[Codec] | None = None) -> None:
        self._handler = handler
        self._options = options or RpcOptions.from_env()
        self.control = ControlServer(address, handler, self, token=token, max_frame_bytes=max_frame_bytes,
                                     codecs=codecs)
        self.address, self.port = address, self.control.port
        self._in_group = False

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        log.info("backend rpc: stages talk over torch.distributed.rpc, which pickles; trusted networks only")
        self.control.serve_forever(stop)

    def join(self, conn: Conn, obj: dict[str, Any], session: Session | None) -> bool:
        send_refused(conn.sock, RefusalCode.MISMATCH, f"worker {self.address} runs the rpc backend; "
                                                      f"start every worker of a chain with the same --backend")
        log.warning("refused a TCP data connection from %s: this worker runs the rpc backend", conn.name)
        return False

    def run(self, session: Session, info: StageInfo, hello: dict[str, Any]) -> dict[str, Any]:
        spec, ctrl = session.spec, session.ctrl
        send_json(ctrl.sock, MsgType.READY, info.to_json(), session_id=spec.session_id)
        _, join = ctrl.reader.control_json([MsgType.JOIN])
        if not RPC_LOCK.acquire(timeout=spec.timeout_s):
            raise StageError(f"stage {spec.stage_index}: this process is still in another RPC group")
        self._in_group = True
        link = self._enter_group(spec, info, ctrl, join)
        session.threads.append(spawn(link.watch_control, name="stage-ctrl"))
        stats = self._handler.run(link)
        send_json(ctrl.sock, MsgType.STATS, stats, session_id=spec.session_id)
        _await_hangup(ctrl.sock, spec.timeout_s)
        reason = leave_rpc()
        if reason:
            log.warning("session %d: leaving the RPC group: %s", spec.session_id, reason)
        return stats

    def close(self, session: Session) -> None:
        """Leave the session's RPC group (a no-op after a clean exit) and free it for the next."""
        global _ACTIVE
        if self._in_group:
            leave_rpc()
            _ACTIVE = None
            self._in_group = False
            RPC_LOCK.release()

    def _enter_group(self, spec: SessionSpec, info: StageInfo, ctrl: Conn, join: dict[str, Any]) -> RpcStageLink:
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
                                 f"({first_line(exc)}); give the source an address this worker can reach "
                                 f"(--rpc-master or {ENV_MASTER_ADDR})") from None
        store = session_store(client, spec.session_id)
        del client
        _ACTIVE = link
        store.set(f"arrived/{rank}", b"1")
        try:
            init_rpc(_stage_name(rank), rank, world, store, session_id=spec.session_id, timeout_s=spec.timeout_s,
                      tp_ifname=tp_ifname, gloo_ifname=gloo_ifname)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / DistError
            raise TransportError(f"stage {rank} could not join the RPC group at {master}: {first_line(exc)}") from None
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
