"""Binary framing for the TCP backend: a fixed header, optional timing records, raw bytes.

Every frame is::

    header (fixed, 127 bytes, network byte order)
      magic      4s   b"PPWF"
      version    B    WIRE_VERSION
      msg_type   B    MsgType
      dtype      B    dtype code (DTYPES), 0 for control frames
      ndim       B    number of dims in `shape` (<= MAX_NDIM)
      nrec       B    number of StageRecord entries that follow the header (<= MAX_RECORDS)
      flags      B    per message type (CHALLENGE: bit 0 = token required)
      codec      B    DATA: the codec of the payload (paretopipe.codecs wire id; 0 = none)
      session_id Q
      batch_id   Q
      t_send     d    sender's monotonic clock when it started sending this frame
      t_aux      d    per message type (DATA: the sender's encode time in seconds)
      scale      d    DATA with int8: the affine scale (else 1.0)
      zero_point i    DATA with int8: the affine zero point (else 0)
      length     Q    payload bytes after the records (bytes on the wire)
      shape      8q   tensor shape (the decoded tensor), unused dims 0
    records  nrec x 48 bytes (compute_s d, queue_s d, transfer_in_s d, bytes_in Q, raw_in Q,
             encode_in_s d, decode_in_s d)
    payload  `length` bytes: the encoded tensor (DATA), UTF-8 JSON (control), or a fixed binary
             layout (CHALLENGE/AUTH/AUTH_OK)

Nothing here unpickles anything. Receivers check the header before reading a payload: a wrong
magic or version, an unknown type or dtype, too many dims or records, or a declared length over
the caller's limit raise :class:`ProtocolError` *before* anything is allocated for the payload.
Tensor payloads are received into a buffer the caller preallocated from the shape it expects (see
:func:`recv_payload_into`): the part the reader's fixed read-ahead already holds is copied over,
the rest goes with ``recv_into`` straight from the socket, never into concatenated chunks.

Authentication (optional, HMAC-SHA256 challenge-response with a shared token) runs right after
the connection opens, before any other frame is accepted: see :func:`server_auth` and
:func:`client_auth`. docs/protocol.md describes the whole protocol.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from paretopipe.errors import ProtocolError, TransportError
from paretopipe.transport.base import StageRecord

MAGIC = b"PPWF"
#: 2: codecs (codec, scale, zero_point in the header; raw size and encode/decode times per record)
WIRE_VERSION = 2
MAX_NDIM = 8
MAX_RECORDS = 32
MAX_CONTROL_BYTES = 64 * 1024
#: Default upper bound for one tensor payload (a VGG16 activation at batch 64 is ~822 MB).
DEFAULT_MAX_FRAME_BYTES = 2 * 1024**3

_HEADER = struct.Struct("!4sBBBBBBBQQdddiQ8q")
HEADER_SIZE = _HEADER.size
_RECORD = struct.Struct("!dddQQdd")
RECORD_SIZE = _RECORD.size
NONCE_BYTES = 32
MAC_BYTES = 32


class MsgType(enum.IntEnum):
    CHALLENGE = 1  # server -> client, payload: nonce; flags bit 0: token required
    AUTH = 2  # client -> server, payload: mac + client nonce (empty without token)
    AUTH_OK = 3  # server -> client, payload: server mac (empty without token)
    PING = 4  # clock probe
    PONG = 5  # reply; t_send = responder's clock
    HELLO = 6  # source -> stage: session spec (JSON)
    READY = 7  # stage -> source: shapes, environment (JSON)
    JOIN = 8  # stage i -> stage i+1: session id, the tensor it will send, clock offset (JSON)
    JOINED = 9  # stage i+1 -> stage i: accepted (JSON)
    DATA = 10  # a batch: records + raw tensor bytes
    END = 11  # source -> stage: the session is over, report your stats
    STATS = 12  # stage -> source: resource figures (JSON)
    ERROR = 13  # anyone -> peer: a failure, JSON {"stage": i, "message": "..."}
    REFUSED = 14  # server -> client: connection or session refused, JSON {"code", "reason", ...}


# dtype codes on the wire. Names are torch's dtype names without the "torch." prefix.
DTYPES: dict[int, tuple[str, int]] = {
    1: ("float32", 4),
    2: ("float16", 2),
    3: ("bfloat16", 2),
    4: ("float64", 8),
    5: ("int64", 8),
    6: ("int32", 4),
    7: ("uint8", 1),
    8: ("int8", 1),
}
DTYPE_CODES = {name: code for code, (name, _) in DTYPES.items()}
_MSG_TYPES = {int(m): m for m in MsgType}


class PeerClosed(TransportError):
    """The peer closed the connection (cleanly between frames, or in the middle of one)."""

    def __init__(self, message: str, *, mid_frame: bool = False) -> None:
        super().__init__(message)
        self.mid_frame = mid_frame


class ReceiveTimeout(TransportError):
    """No bytes arrived within the socket's timeout. ``got`` bytes of the item had arrived."""

    def __init__(self, message: str, *, got: int) -> None:
        super().__init__(message)
        self.got = got


class AuthError(TransportError):
    """Token authentication failed (wrong token, missing token, or a peer that skipped it)."""


class RefusalCode(str, enum.Enum):
    """Why a worker turned a connection or a session away: the ``code`` of a REFUSED frame.

    The frame's ``reason`` is the text for people; the code is for the peer's program, which
    retries only where waiting can help (:attr:`retryable`)."""

    TOO_MANY_PENDING = "too_many_pending"  # this peer address has too many unidentified connections
    EVICTED = "evicted"  # dropped to make room for another peer while every pending slot was taken
    TIMEOUT = "timeout"  # the preamble (auth, HELLO/JOIN) did not arrive within its deadline
    BUSY = "busy"  # another session holds the worker; ``holder`` names it
    BAD_TOKEN = "bad_token"  # wrong or missing token
    PROTOCOL = "protocol"  # a malformed frame, or another wire version
    CODEC = "codec"  # the session's codec is not one this worker takes
    MISMATCH = "mismatch"  # JOIN: no such session, another backend, or a shape mismatch
    OTHER = "other"  # a REFUSED without a known code (an older peer)

    @property
    def retryable(self) -> bool:
        return self in (RefusalCode.TOO_MANY_PENDING, RefusalCode.EVICTED)


class Refused(TransportError):
    """The peer sent REFUSED: its reason (text), its code, and what else it said
    (``retry_after_s`` for a pending limit, ``holder`` for a busy worker)."""

    def __init__(self, reason: str, code: RefusalCode = RefusalCode.OTHER, detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"refused: {reason}")
        self.reason = reason
        self.code = code
        self.detail = detail or {}

    @property
    def retry_after_s(self) -> float | None:
        value = self.detail.get("retry_after_s")
        return float(value) if isinstance(value, (int, float)) and value >= 0 else None

    @classmethod
    def from_payload(cls, raw: bytes) -> Refused:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return cls(repr(raw[:200]))
        if not isinstance(obj, dict):
            return cls(repr(raw[:200]))
        try:
            code = RefusalCode(obj.get("code", "other"))
        except ValueError:
            code = RefusalCode.OTHER
        detail = {k: v for k, v in obj.items() if k not in ("code", "reason")}
        return cls(str(obj.get("reason") or obj), code, detail)


def refusal(code: RefusalCode, reason: str, **detail: Any) -> dict[str, Any]:
    """The JSON payload of a REFUSED frame."""
    return {"code": code.value, "reason": reason, **detail}


def send_refused(sock: socket.socket, code: RefusalCode, reason: str, **detail: Any) -> None:
    """Tell the peer why it is turned away, best effort (it may be gone, or not reading)."""
    try:
        send_json(sock, MsgType.REFUSED, refusal(code, reason, **detail))
    except OSError:
        pass


@dataclass(slots=True)
class Header:
    msg_type: MsgType
    dtype_code: int
    shape: tuple[int, ...]
    nrec: int
    flags: int
    session_id: int
    batch_id: int
    t_send: float
    t_aux: float
    length: int
    codec_id: int = 0
    scale: float = 1.0
    zero_point: int = 0

    @property
    def dtype(self) -> str | None:
        entry = DTYPES.get(self.dtype_code)
        return entry[0] if entry else None


def dtype_code(name: str) -> int:
    try:
        return DTYPE_CODES[name]
    except KeyError:
        raise ProtocolError(f"dtype {name!r} cannot travel on the wire (known: {sorted(DTYPE_CODES)})") from None


def nbytes(shape: Sequence[int], dtype: str) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * DTYPES[dtype_code(dtype)][1]


def shape_str(dtype: str, shape: Sequence[int]) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def pack_header(
    msg_type: MsgType,
    *,
    length: int = 0,
    session_id: int = 0,
    batch_id: int = 0,
    t_send: float = 0.0,
    t_aux: float = 0.0,
    dtype: str | None = None,
    shape: Sequence[int] = (),
    nrec: int = 0,
    flags: int = 0,
    codec_id: int = 0,
    scale: float = 1.0,
    zero_point: int = 0,
) -> bytes:
    if len(shape) > MAX_NDIM:
        raise ProtocolError(f"tensor has {len(shape)} dims; the wire carries at most {MAX_NDIM}")
    if nrec > MAX_RECORDS:
        raise ProtocolError(f"{nrec} stage records; the wire carries at most {MAX_RECORDS}")
    dims = list(shape) + [0] * (MAX_NDIM - len(shape))
    code = dtype_code(dtype) if dtype else 0
    return _HEADER.pack(
        MAGIC, WIRE_VERSION, int(msg_type), code, len(shape), nrec, flags, codec_id,
        session_id, batch_id, t_send, t_aux, scale, zero_point, length, *dims,
    )


def unpack_header(raw: bytes | bytearray | memoryview, *, max_length: int) -> Header:
    """Parse and check a header. Raises ProtocolError on anything malformed or too large."""
    (magic, version, mtype, code, ndim, nrec, flags, codec_id, sid, bid, t_send, t_aux, scale, zero_point, length,
     *dims) = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a ParetoPipe peer")
    if version != WIRE_VERSION:
        raise ProtocolError(f"wire version {version}, this side speaks {WIRE_VERSION}: upgrade the older side")
    msg_type = _MSG_TYPES.get(mtype)
    if msg_type is None:
        raise ProtocolError(f"unknown message type {mtype}")
    if code != 0 and code not in DTYPES:
        raise ProtocolError(f"unknown dtype code {code}")
    if ndim > MAX_NDIM:
        raise ProtocolError(f"ndim {ndim} > {MAX_NDIM}")
    if nrec > MAX_RECORDS:
        raise ProtocolError(f"{nrec} records > {MAX_RECORDS}")
    if length > max_length:
        raise ProtocolError(f"declared payload of {length} bytes exceeds the limit of {max_length} bytes for {msg_type.name}")
    shape = tuple(dims[:ndim])
    if any(d < 0 for d in shape):
        raise ProtocolError(f"negative dimension in shape {shape}")
    if codec_id and msg_type != MsgType.DATA:
        raise ProtocolError(f"{msg_type.name} frame declares codec {codec_id}; only DATA frames are encoded")
    return Header(msg_type, code, shape, nrec, flags, sid, bid, t_send, t_aux, length, codec_id, scale, zero_point)


def _recv_some(sock: socket.socket, view: memoryview, *, got: int, total: int, what: str) -> int:
    """One ``recv_into`` into `view` (`got` of `total` bytes of `what` already in), errors named."""
    try:
        n = sock.recv_into(view)
    except TimeoutError as exc:
        raise ReceiveTimeout(f"timed out receiving {what} ({got}/{total} bytes)", got=got) from exc
    except OSError as exc:
        raise PeerClosed(f"connection lost while receiving {what}: {exc}", mid_frame=got > 0) from exc
    if n == 0:
        raise PeerClosed(
            f"peer closed the connection {'in the middle of' if got else 'before'} {what} ({got}/{total} bytes)",
            mid_frame=got > 0,
        )
    return n


def recv_exactly_into(sock: socket.socket, view: memoryview, *, what: str = "frame") -> None:
    """Fill `view` from the socket. PeerClosed if the peer closes first."""
    got = 0
    total = len(view)
    while got < total:
        got += _recv_some(sock, view[got:], got=got, total=total, what=what)


class FrameReader:
    """Reads frames from one socket, with a small read-ahead.

    Each ``recv`` takes whatever has arrived, up to READ_AHEAD bytes, so a small frame (a
    control message, the logits, a small activation) costs one receive call rather than one
    each for its header, records and payload. Bytes past the current frame stay here for the
    next call: once a socket has a reader, everything must read it through the reader. A
    payload larger than what is buffered goes straight from the socket into the caller's
    buffer after the buffered part is copied over."""

    READ_AHEAD = 64 * 1024

    def __init__(self, sock: socket.socket, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray(self.READ_AHEAD)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0  # buffered, not yet consumed: self._buf[self._lo:self._hi]

    def _ensure(self, n: int, what: str) -> memoryview:
        """At least `n` (<= READ_AHEAD) bytes buffered; returns them and consumes them."""
        if self._hi - self._lo < n:
            if self._lo:
                have = self._hi - self._lo
                self._view[:have] = self._view[self._lo:self._hi]
                self._lo, self._hi = 0, have
            while self._hi < n:
                self._hi += _recv_some(self.sock, self._view[self._hi:], got=self._hi, total=n, what=what)
        out = self._view[self._lo:self._lo + n]
        self._lo += n
        return out

    def read_into(self, out: memoryview, *, what: str) -> None:
        """Fill `out`: the buffered bytes first, the rest straight from the socket."""
        n = len(out)
        have = min(self._hi - self._lo, n)
        if have:
            out[:have] = self._view[self._lo:self._lo + have]
            self._lo += have
        if have < n:
            if n - have <= self.READ_AHEAD // 2:
                out[have:] = self._ensure(n - have, what)
            else:
                recv_exactly_into(self.sock, out[have:], what=what)

    def header(self, *, control_only: bool = False) -> Header:
        """Receive one header. With control_only, any payload over MAX_CONTROL_BYTES is refused."""
        raw = self._ensure(HEADER_SIZE, "a frame header")
        limit = MAX_CONTROL_BYTES if control_only else self.max_frame_bytes
        hdr = unpack_header(raw, max_length=limit)
        if hdr.msg_type != MsgType.DATA and hdr.length > MAX_CONTROL_BYTES:
            raise ProtocolError(f"{hdr.msg_type.name} frame declares {hdr.length} bytes (control frames are <= {MAX_CONTROL_BYTES})")
        if hdr.msg_type != MsgType.DATA and hdr.nrec:
            raise ProtocolError(f"{hdr.msg_type.name} frame carries stage records")
        return hdr

    def records(self, hdr: Header) -> list[StageRecord]:
        if not hdr.nrec:
            return []
        raw = self._ensure(hdr.nrec * RECORD_SIZE, "stage records")
        return [StageRecord(*rec) for rec in _RECORD.iter_unpack(raw)]

    def small_payload(self, hdr: Header) -> bytes:
        """Payload of a control frame (length already bounded by header())."""
        if hdr.length > MAX_CONTROL_BYTES:
            raise ProtocolError(f"control payload of {hdr.length} bytes")
        if not hdr.length:
            return b""
        return bytes(self._ensure(hdr.length, f"{hdr.msg_type.name} payload"))

    def control(self, expect: Sequence[MsgType]) -> tuple[Header, bytes]:
        hdr = self.header(control_only=True)
        if hdr.msg_type not in expect:
            names = "/".join(m.name for m in expect)
            if hdr.msg_type == MsgType.REFUSED:
                raise Refused.from_payload(self.small_payload(hdr))
            if hdr.msg_type == MsgType.ERROR:
                raise TransportError(f"peer error: {_reason(self.small_payload(hdr))}")
            raise ProtocolError(f"expected {names}, got {hdr.msg_type.name}")
        return hdr, self.small_payload(hdr)

    def control_json(self, expect: Sequence[MsgType]) -> tuple[Header, dict[str, Any]]:
        hdr, raw = self.control(expect)
        return hdr, parse_json(raw, hdr.msg_type)


def recv_payload_into(reader: FrameReader, hdr: Header, out: memoryview) -> None:
    """Receive a DATA payload into `out`, a buffer preallocated for the expected tensor (or, for
    an encoded payload, a staging buffer of the length the codec's bound let through).

    The header must already have been checked against the expected shape, dtype and codec; its
    length must equal len(out)."""
    if hdr.length != len(out):
        raise ProtocolError(f"payload of {hdr.length} bytes does not fit the {len(out)}-byte buffer for the expected tensor")
    reader.read_into(out, what=f"batch {hdr.batch_id} payload")


def parse_json(raw: bytes, msg_type: MsgType) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{msg_type.name} payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{msg_type.name} payload is not a JSON object")
    return obj


def _reason(raw: bytes) -> str:
    try:
        obj = json.loads(raw.decode("utf-8"))
        return str(obj.get("reason") or obj.get("message") or obj)
    except (UnicodeDecodeError, ValueError, AttributeError):
        return repr(raw[:200])


def send_control(sock: socket.socket, msg_type: MsgType, payload: bytes = b"", **fields: Any) -> None:
    if len(payload) > MAX_CONTROL_BYTES:
        raise ProtocolError(f"{msg_type.name} payload of {len(payload)} bytes is over {MAX_CONTROL_BYTES}")
    sock.sendall(pack_header(msg_type, length=len(payload), **fields) + payload)


def send_json(sock: socket.socket, msg_type: MsgType, obj: dict[str, Any], **fields: Any) -> None:
    send_control(sock, msg_type, json.dumps(obj, separators=(",", ":")).encode("utf-8"), **fields)


def send_data(
    sock: socket.socket,
    payload: memoryview,
    *,
    dtype: str,
    shape: Sequence[int],
    records: Sequence[StageRecord],
    session_id: int,
    batch_id: int,
    t_send: float,
    codec_id: int = 0,
    scale: float = 1.0,
    zero_point: int = 0,
    encode_s: float = 0.0,
) -> None:
    """Send one DATA frame: header, records and the (encoded) tensor bytes in one gathered write.

    One ``sendmsg`` hands all three to the kernel without joining them into one buffer (the
    tensor bytes are never copied in user space); only what the kernel did not take at once,
    e.g. the rest of a large tensor, needs further calls."""
    head = pack_header(
        MsgType.DATA, length=len(payload), session_id=session_id, batch_id=batch_id,
        t_send=t_send, t_aux=encode_s, dtype=dtype, shape=shape, nrec=len(records), codec_id=codec_id,
        scale=scale, zero_point=zero_point,
    )
    if records:
        head += b"".join(_RECORD.pack(*r.as_tuple()) for r in records)
    sent = sock.sendmsg((head, payload))
    if sent < len(head):
        sock.sendall(memoryview(head)[sent:])
        sent = len(head)
    if sent - len(head) < len(payload):
        sock.sendall(payload[sent - len(head):])


# --------------------------------------------------------------------------- authentication

_AUTH_LABEL = b"paretopipe-auth-v1"


def _mac(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, _AUTH_LABEL + b"|" + role + b"|" + first + second, hashlib.sha256).digest()


def read_token_file(path: str | os.PathLike[str]) -> bytes:
    """The shared secret: the file's bytes, surrounding whitespace stripped."""
    from paretopipe.errors import ConfigError

    try:
        with open(path, "rb") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty; put a random secret in it (e.g. `openssl rand -hex 32`)")
    return token


def server_auth(sock: socket.socket, reader: FrameReader, token: bytes | None) -> None:
    """Server side of the handshake. Raises AuthError (after telling the peer) or ProtocolError."""
    nonce = os.urandom(NONCE_BYTES)
    send_control(sock, MsgType.CHALLENGE, nonce, flags=1 if token else 0)
    _, payload = reader.control([MsgType.AUTH])
    if token is None:
        send_control(sock, MsgType.AUTH_OK)
        return
    if len(payload) != MAC_BYTES + NONCE_BYTES:
        send_refused(sock, RefusalCode.BAD_TOKEN, "this worker requires a token (--token-file)")
        raise AuthError("peer sent no token")
    mac, client_nonce = payload[:MAC_BYTES], payload[MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(token, b"client", nonce, client_nonce)):
        send_refused(sock, RefusalCode.BAD_TOKEN, "wrong token")
        raise AuthError("wrong token")
    send_control(sock, MsgType.AUTH_OK, _mac(token, b"server", client_nonce, nonce))


def client_auth(sock: socket.socket, reader: FrameReader, token: bytes | None, *, peer: str) -> None:
    """Client side. Refuses a worker that wants a token we lack, or that does not check ours."""
    hdr, nonce = reader.control([MsgType.CHALLENGE])
    required = bool(hdr.flags & 1)
    if len(nonce) != NONCE_BYTES:
        raise ProtocolError(f"{peer}: malformed challenge")
    if required and token is None:
        raise AuthError(f"{peer} requires a token; pass --token-file with the shared secret")
    if token is not None and not required:
        raise AuthError(f"{peer} does not check tokens but this side has one; start the worker with --token-file too")
    if token is None:
        send_control(sock, MsgType.AUTH)
        reader.control([MsgType.AUTH_OK])
        return
    client_nonce = os.urandom(NONCE_BYTES)
    send_control(sock, MsgType.AUTH, _mac(token, b"client", nonce, client_nonce) + client_nonce)
    try:
        _, proof = reader.control([MsgType.AUTH_OK])
    except Refused as exc:
        if exc.code not in (RefusalCode.BAD_TOKEN, RefusalCode.OTHER):
            raise  # turned away for another reason (a pending limit): the caller says which
        raise AuthError(f"{peer} refused our token: {exc}") from None
    except TransportError as exc:
        raise AuthError(f"{peer} refused our token: {exc}") from None
    if not hmac.compare_digest(proof, _mac(token, b"server", client_nonce, nonce)):
        raise AuthError(f"{peer} could not prove it holds the token; refusing to talk to it")
