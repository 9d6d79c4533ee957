"""The TCP backend: our own framing (:mod:`paretopipe.transport.wire`) over plain sockets.

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
transfer time for the hop it received. The control side (connections, auth, HELLO/READY, END,
STATS, ERROR, the worker's accept loop) is :mod:`.control`, shared with the RPC backend; this
module is the data path and the JOINs between stages. docs/protocol.md has the message sequence.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from paretopipe.codecs import NONE as CODEC_NONE
from paretopipe.codecs import Codec, CodecError, Decoder, Encoder, parse_codec
from paretopipe.errors import StageError, TransportError
from paretopipe.threads import spawn
from paretopipe.transport.base import (
    InBatch, ResultBatch, SessionPlan, SessionSpec, SourceLink, StageHandler, StageInfo, StageLink,
    StageRecord,
)
from paretopipe.transport.control import (
    Conn, ControlServer, Session, SourceControl, admitted, await_end, shutdown,
)
from paretopipe.transport.wire import (
    DEFAULT_MAX_FRAME_BYTES, FrameReader, Header, MsgType, PeerClosed, ProtocolError, ReceiveTimeout, RefusalCode,
    nbytes, recv_payload_into, send_data, send_json, send_refused, shape_str,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tensors on the wire


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


# --------------------------------------------------------------------------- source side


class TcpSourceLink(SourceLink):
    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._control = SourceControl(max_frame_bytes=max_frame_bytes)
        self._logits_shape: tuple[int, ...] = ()
        self._send_lock = threading.Lock()
        # The last stage's connection while the session runs: recv() reads the results from it
        # itself (no reader thread, no hand-off); finish() gives it a reader thread.
        self._direct: Conn | None = None
        # the tensor the next result is received into, made after the one before arrived
        self._result_buffer: tuple[Any, memoryview] | None = None
        self._encoder: Encoder | None = None  # the session's codec, made at the first send

    def open(self, plan: SessionPlan) -> list[StageInfo]:
        control = self._control
        deadline = control.begin(plan)
        self._logits_shape = tuple(plan.logits_shape)
        n = plan.spec.num_stages
        for idx in range(n - 1, 0, -1):  # last stage first: stage i JOINs stage i+1 when it gets HELLO
            control.hello(idx, plan, deadline=deadline, token=plan.token)
            control.ready(idx, plan)
        infos = control.check_chain(plan)
        for idx in range(1, n - 1):
            control.watch(idx)
        self._direct = control.conns[n - 1]
        return infos

    def _read_result(self, conn: Conn, hdr: Header) -> ResultBatch:
        """The rest of a result frame whose header `hdr` was just read."""
        spec = self._control.spec
        if hdr.shape != self._logits_shape or hdr.dtype != spec.dtype:
            raise ProtocolError(f"result {shape_str(hdr.dtype or '?', hdr.shape)} is not the expected {shape_str(spec.dtype, self._logits_shape)}")
        if hdr.codec_id != CODEC_NONE.wire_id:
            raise ProtocolError(f"the result came encoded (codec id {hdr.codec_id}); logits return uncoded")
        records = conn.reader.records(hdr)
        logits, view = self._result_buffer or self._new_result_buffer()
        recv_payload_into(conn.reader, hdr, view)
        t_done = time.monotonic()
        # the next result's tensor now, off the critical path (each result keeps its own tensor)
        self._result_buffer = self._new_result_buffer()
        return ResultBatch(hdr.batch_id, logits, records, t_done - (hdr.t_send - conn.offset), hdr.length, t_done,
                           return_raw_bytes=len(view), return_encode_s=hdr.t_aux)

    def _new_result_buffer(self) -> tuple[Any, memoryview]:
        import torch

        logits = torch.empty(self._logits_shape, dtype=getattr(torch, self._control.spec.dtype))
        return logits, _tensor_bytes(logits)

    def send(self, batch_id: int, tensor: Any) -> float:
        control = self._control
        spec = control.spec
        with self._send_lock:
            if self._encoder is None:
                self._encoder = Encoder(parse_codec(spec.codec))
            t_start = time.monotonic()
            try:
                send_encoded(control.conns[1].sock, self._encoder, tensor, (), session_id=spec.session_id,
                             batch_id=batch_id)
            except OSError as exc:
                raise control.failure(("eof", 1, f"sending batch {batch_id} failed: {exc}")) from None
        return t_start

    def recv(self, timeout: float) -> ResultBatch:
        if self._direct is None:
            return self._control.next_result(timeout)
        return self._recv_direct(self._direct, timeout)

    def _recv_direct(self, conn: Conn, timeout: float) -> ResultBatch:
        """Read the next result from the last stage's connection in the calling thread.

        The other connections' reader threads report failures through the events; one
        reported before this call is raised at once. A failure while waiting here shows up on
        this connection too (the last stage reports losing its upstream, or closes)."""
        control = self._control
        events = control.events
        idx = control.spec.num_stages - 1
        try:
            reported = events.get(0)
        except queue.Empty:
            reported = None
        if reported is not None:
            raise control.failure(reported)
        if conn.sock.gettimeout() != timeout:
            conn.sock.settimeout(timeout)
        try:
            try:
                hdr = conn.reader.header()
            except ReceiveTimeout as exc:
                if exc.got == 0:
                    raise control.no_result(timeout) from None
                raise
            if hdr.msg_type == MsgType.DATA:
                return self._read_result(conn, hdr)
            if not events.on_control(idx, hdr, conn.reader):
                raise ProtocolError(f"unexpected {hdr.msg_type.name} frame")
        except (TransportError, OSError) as exc:
            events.on_reader_exit(idx, exc)
            try:
                event = events.get(0)
            except queue.Empty:  # the link was closed meanwhile
                raise StageError(f"{conn.name}: {exc}") from None
            raise control.failure(event) from None
        # STATS or ERROR in the middle of the session: the stage gave up
        raise control.failure(events.get(0))

    def finish(self) -> list[dict[str, Any]]:
        if self._direct is not None:  # from now on a reader thread collects its STATS
            self._control.watch(self._control.spec.num_stages - 1, self._read_result)
            self._direct = None
        stats = self._control.finish()
        self.close()
        return stats

    def close(self) -> None:
        self._control.close()


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
    def __init__(self, spec: SessionSpec, info: StageInfo, *, up: Conn, down: Conn, ctrl: Conn, pin: bool) -> None:
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
        # a separate control connection gets a watcher: END ends the session, EOF aborts it
        self.watcher = spawn(self._watch_ctrl, name="stage-ctrl") if ctrl is not up else None

    def _watch_ctrl(self) -> None:
        """The socket keeps its timeout (for the last stage it also carries the results back, and
        a send must not block forever); an idle receive timeout just means "no END yet"."""
        self._abort = await_end(self._ctrl)
        self._ended = self._abort is None
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


class TcpStageServer:
    """A worker serving TCP sessions: the control server, with this backend's session (the
    JOIN to the next stage, the one from the previous stage, and the data path)."""

    backend = "tcp"

    def __init__(self, address: str, handler: StageHandler, *, token: bytes | None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, codecs: Sequence[Codec] | None = None) -> None:
        self._handler = handler
        self.control = ControlServer(address, handler, self, token=token, max_frame_bytes=max_frame_bytes,
                                     codecs=codecs)
        self.address, self.port = address, self.control.port
        # the session in progress waits for its upstream stage's JOIN (one session at a time)
        self._joined = threading.Event()
        self._up: Conn | None = None
        self._join_error: str | None = None

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        self.control.serve_forever(stop)

    def join(self, conn: Conn, obj: dict[str, Any], session: Session | None) -> bool:
        try:
            sid, shape, dtype = int(obj["session_id"]), tuple(int(d) for d in obj["shape"]), str(obj["dtype"])
            offset, from_stage = float(obj["clock_offset_s"]), int(obj["from_stage"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed JOIN: {exc!r}") from None
        if session is None or session.spec.session_id != sid or session.info is None or self._joined.is_set():
            send_refused(conn.sock, RefusalCode.MISMATCH, f"no session {sid} is waiting for its upstream stage on {self.address}")
            log.warning("refused JOIN from %s for session %d: no such session waiting", conn.name, sid)
            return False
        info = session.info
        if shape != info.in_shape or dtype != info.dtype:
            reason = (f"shape mismatch between stage {from_stage} ({obj.get('address', conn.name)}, sends "
                      f"{shape_str(dtype, shape)}) and stage {info.index} ({self.address}, expects {shape_str(info.dtype, info.in_shape)})")
            send_refused(conn.sock, RefusalCode.MISMATCH, reason)
            self._join_error = reason
            self._joined.set()
            return False
        send_json(conn.sock, MsgType.JOINED, {"stage": info.index})
        conn.name = f"stage {from_stage} ({obj.get('address', conn.name)})"
        conn.offset = -offset  # JOIN carries (our clock - their clock) as they measured it; store theirs - ours
        session.conns.append(conn)
        self._up = conn
        self._joined.set()
        return True

    def _connect_next(self, spec: SessionSpec, info: StageInfo) -> Conn:
        assert spec.next_address is not None
        nxt = spec.stage_index + 1
        name = f"stage {nxt} ({spec.next_address})"
        sock: socket.socket | None = None
        try:
            conn = admitted(spec.next_address, name=name, what=f"stage {nxt}", deadline=time.monotonic() + spec.timeout_s,
                            token=self.control.token, max_frame_bytes=self.control.max_frame_bytes)
            sock = conn.sock
            send_json(sock, MsgType.JOIN, {
                "session_id": spec.session_id, "from_stage": spec.stage_index, "address": self.address,
                "shape": list(info.out_shape), "dtype": info.dtype, "clock_offset_s": conn.offset,
            })
            conn.reader.control([MsgType.JOINED])
        except TransportError as exc:
            shutdown(sock)
            raise StageError(f"{name} refused stage {spec.stage_index}: {exc}") from None
        return conn

    def run(self, session: Session, info: StageInfo, hello: dict[str, Any]) -> dict[str, Any]:
        spec, ctrl = session.spec, session.ctrl
        self._joined.clear()
        self._up, self._join_error = None, None
        down: Conn | None = None
        if spec.next_address:
            down = self._connect_next(spec, info)
            session.conns.append(down)
        session.info = info
        send_json(ctrl.sock, MsgType.READY, info.to_json(), session_id=spec.session_id)
        if spec.stage_index == 1:
            up = ctrl
            up.offset = -float(hello.get("upstream_clock_offset_s") or 0.0)
        else:
            # every upstream stage builds its module before it joins: give each its timeout
            wait = spec.timeout_s * (spec.stage_index - 1) + spec.timeout_s
            if not self._joined.wait(wait):
                raise StageError(f"stage {spec.stage_index - 1} never connected within {wait:g} s")
            if self._join_error or self._up is None:
                raise StageError(self._join_error or "upstream stage failed to join")
            up = self._up
        link = TcpStageLink(spec, info, up=up, down=down or ctrl, ctrl=ctrl, pin=self._handler.pin_memory)
        if link.watcher is not None:
            session.threads.append(link.watcher)
        stats = self._handler.run(link)
        send_json(ctrl.sock, MsgType.STATS, stats, session_id=spec.session_id)
        return stats

    def close(self, session: Session) -> None:
        """Nothing beyond the control server's part (closing the connections, joining the watcher)."""


def serve(address: str, handler: StageHandler, *, token: bytes | None, stop: threading.Event | None = None,
          max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, codecs: Sequence[Codec] | None = None) -> None:
    TcpStageServer(address, handler, token=token, max_frame_bytes=max_frame_bytes, codecs=codecs).serve_forever(stop)
