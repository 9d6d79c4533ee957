"""The wire format: headers, records, limits, and token authentication, over socketpairs."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from paretopipe.transport.base import StageRecord
from paretopipe.transport.wire import (
    HEADER_SIZE,
    MAGIC,
    MAX_CONTROL_BYTES,
    AuthError,
    FrameReader,
    MsgType,
    PeerClosed,
    ProtocolError,
    client_auth,
    nbytes,
    pack_header,
    read_token_file,
    recv_payload_into,
    send_data,
    send_json,
    server_auth,
    unpack_header,
)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_header_round_trip():
    raw = pack_header(MsgType.DATA, length=123, session_id=2**63 - 1, batch_id=9, t_send=1.5, dtype="float16",
                      shape=(8, 3, 224, 224), nrec=2)
    assert len(raw) == HEADER_SIZE
    hdr = unpack_header(raw, max_length=1000)
    assert (hdr.msg_type, hdr.length, hdr.session_id, hdr.batch_id, hdr.t_send) == (MsgType.DATA, 123, 2**63 - 1, 9, 1.5)
    assert hdr.shape == (8, 3, 224, 224) and hdr.dtype == "float16" and hdr.nrec == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: b"NOPE" + r[4:], "bad magic"),
        (lambda r: r[:4] + bytes([99]) + r[5:], "wire version 99"),
        (lambda r: r[:5] + bytes([200]) + r[6:], "unknown message type 200"),
        (lambda r: r[:6] + bytes([77]) + r[7:], "unknown dtype code 77"),
        (lambda r: r[:7] + bytes([9]) + r[8:], "ndim 9"),
        (lambda r: r[:8] + bytes([33]) + r[9:], "33 records"),
    ],
)
def test_malformed_headers_are_refused(mutate, message):
    raw = mutate(pack_header(MsgType.DATA, length=4, dtype="float32", shape=(1,)))
    with pytest.raises(ProtocolError, match=message):
        unpack_header(raw, max_length=100)


def test_huge_declared_length_is_refused_before_reading_the_payload(pair):
    a, b = pair
    a.sendall(pack_header(MsgType.DATA, length=1 << 50, dtype="float32", shape=(1,)) + b"tail")
    reader = FrameReader(b, max_frame_bytes=1 << 20)
    with pytest.raises(ProtocolError, match=f"declared payload of {1 << 50} bytes exceeds the limit of {1 << 20}"):
        reader.header()
    # nothing was allocated for the payload: the bytes after the header sit in the reader's
    # fixed read-ahead, unconsumed
    rest = bytearray(4)
    reader.read_into(memoryview(rest), what="the rest")
    assert rest == b"tail"


def test_control_frames_are_small(pair):
    a, b = pair
    a.sendall(pack_header(MsgType.HELLO, length=MAX_CONTROL_BYTES + 1))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameReader(b).control([MsgType.HELLO])


def test_truncated_frame_is_peer_closed_mid_frame(pair):
    a, b = pair
    a.sendall(pack_header(MsgType.PING)[:30])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(PeerClosed, match="in the middle of a frame header") as info:
        FrameReader(b).header()
    assert info.value.mid_frame


def test_data_frame_with_records_into_preallocated_buffer(pair):
    a, b = pair
    payload = bytes(range(256)) * 4
    recs = [StageRecord(0.5, 0.25, 0.125, 77), StageRecord(1.0, 2.0, 3.0, 4)]
    send_data(a, memoryview(payload), dtype="float32", shape=(16, 16), records=recs, session_id=3, batch_id=4,
              t_send=12.5)
    reader = FrameReader(b)
    hdr = reader.header()
    assert hdr.length == nbytes((16, 16), "float32") == len(payload)
    assert reader.records(hdr) == recs
    buf = bytearray(len(payload))
    recv_payload_into(reader, hdr, memoryview(buf))
    assert bytes(buf) == payload


@pytest.mark.parametrize("size", [0, 4, 1000, FrameReader.READ_AHEAD // 2 + 4, 3 * FrameReader.READ_AHEAD + 12])
def test_back_to_back_frames_through_the_read_ahead(pair, size):
    """Frames sent in one burst come out whole and in order, whatever the read-ahead took in:
    small payloads from the buffer, large ones partly from it and the rest from the socket."""
    a, b = pair
    frames = []
    for i in range(3):
        payload = bytes((i * 7 + k) % 251 for k in range(size))
        recs = [StageRecord(float(i), 0.5, 0.25, size + i)] * (i + 1)
        frames.append((payload, recs))

    def sender() -> None:
        for i, (payload, recs) in enumerate(frames):
            send_data(a, memoryview(payload), dtype="uint8", shape=(size,), records=recs, session_id=1,
                      batch_id=i, t_send=float(i))
        send_json(a, MsgType.END, {"last": True})

    thread = threading.Thread(target=sender)
    thread.start()  # a large burst does not fit the socket buffers: send while reading
    reader = FrameReader(b)
    for i, (payload, recs) in enumerate(frames):
        hdr = reader.header()
        assert (hdr.msg_type, hdr.batch_id, hdr.shape) == (MsgType.DATA, i, (size,))
        assert reader.records(hdr) == recs
        buf = bytearray(size)
        recv_payload_into(reader, hdr, memoryview(buf))
        assert bytes(buf) == payload
    assert reader.control_json([MsgType.END])[1] == {"last": True}
    thread.join()


def test_payload_must_fit_the_expected_buffer(pair):
    a, b = pair
    a.sendall(pack_header(MsgType.DATA, length=8, dtype="float32", shape=(2,)))
    reader = FrameReader(b)
    hdr = reader.header()
    with pytest.raises(ProtocolError, match="does not fit"):
        recv_payload_into(reader, hdr, memoryview(bytearray(4)))


def test_json_control_round_trip_and_errors(pair):
    a, b = pair
    send_json(a, MsgType.READY, {"x": [1, 2]})
    assert FrameReader(b).control_json([MsgType.READY])[1] == {"x": [1, 2]}
    send_json(a, MsgType.REFUSED, {"reason": "busy"})
    with pytest.raises(Exception, match="busy"):
        FrameReader(b).control([MsgType.READY])
    a.sendall(pack_header(MsgType.READY, length=3) + b"\xff\xfe{")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        FrameReader(b).control_json([MsgType.READY])


def _auth(server_token, client_token):
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    errors: dict[str, BaseException] = {}

    def server():
        try:
            server_auth(a, FrameReader(a), server_token)
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
            errors["server"] = exc
        finally:
            a.close()

    t = threading.Thread(target=server)
    t.start()
    try:
        client_auth(b, FrameReader(b), client_token, peer="worker")
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
        errors["client"] = exc
    t.join()
    b.close()
    return errors


def test_auth_matching_tokens_and_no_tokens():
    assert _auth(b"secret", b"secret") == {}
    assert _auth(None, None) == {}


def test_auth_wrong_or_missing_token_is_refused():
    errors = _auth(b"secret", b"guess")
    assert isinstance(errors["server"], AuthError) and "wrong token" in str(errors["server"])
    assert isinstance(errors["client"], AuthError) and "refused our token" in str(errors["client"])
    errors = _auth(b"secret", None)
    assert "requires a token" in str(errors["client"])


def test_auth_client_refuses_a_server_that_does_not_check():
    errors = _auth(None, b"secret")
    assert "does not check tokens" in str(errors["client"])


def test_token_file(tmp_path):
    from paretopipe.errors import ConfigError

    f = tmp_path / "t"
    f.write_text("  abc\n")
    assert read_token_file(f) == b"abc"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token_file(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token_file(tmp_path / "missing")


def test_magic_is_documented_value():
    assert MAGIC == b"PPWF" and struct.calcsize("!4sBBBBBBBQQdddiQ8q") == HEADER_SIZE == 127
