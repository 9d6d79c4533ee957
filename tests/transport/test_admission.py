"""A worker that junk connections cannot take down, and a source that says why it was turned away.

Workers run as real processes on loopback (tests/conftest.py). Junk comes from 127.0.0.1; a
legitimate source either shares that address or binds to 127.0.0.2 (the whole of 127.0.0.0/8 is
loopback on Linux)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from paretopipe.cli import main as cli_main
from paretopipe.errors import TransportError
from paretopipe.polling import poll_until
from paretopipe.runtime.source import RunConfig, RunFailed, run
from paretopipe.transport.admission import Limits, PendingTable
from paretopipe.transport.base import SessionSpec
from paretopipe.transport.control import MAX_PENDING_PER_PEER, parse_address
from paretopipe.transport.wire import FrameReader, MsgType, ReceiveTimeout, RefusalCode, client_auth, send_json

SMALL = {"batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "threads": 1, "timeout_s": 20,
         "batches": 2, "model": "resnet18", "splits": (5,)}


def _cfg(tmp_path: Path, name: str, **kw) -> RunConfig:
    return RunConfig(out=tmp_path / f"{name}.json", **{**SMALL, **kw})


class Junk:
    """`n` connections from 127.0.0.1 that never send a byte (with `auth`: that authenticate and
    then go silent), held open: one the worker closes is opened again (every `renew_s`), as a
    wedged client or a scanner would."""

    def __init__(self, address: str, n: int, *, renew_s: float = 0.1, auth: bool = False) -> None:
        self.target = parse_address(address)
        self.auth = auth
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        for _ in range(n):
            self._open()
        self._thread = threading.Thread(target=self._renew, args=(renew_s,), daemon=True)
        self._thread.start()

    def _open(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        try:
            s.connect(self.target)
            if self.auth:
                client_auth(s, FrameReader(s), None, peer="worker")
        except (OSError, TransportError):  # refused: it tries again at the next renewal
            s.close()
            return
        s.setblocking(False)
        self.socks.append(s)

    def _closed(self, s: socket.socket) -> bool:
        try:
            return s.recv(4096) == b""  # EOF, after any CHALLENGE or REFUSED the worker sent
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _renew(self, every: float) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever the test does
        while not self._stop.wait(every) and time.monotonic() < deadline:
            for s in list(self.socks):
                if self._closed(s):
                    self.socks.remove(s)
                    s.close()
                    self._open()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


@pytest.fixture
def junk():
    made: list[Junk] = []

    def make(address: str, n: int, **kw) -> Junk:
        made.append(Junk(address, n, **kw))
        return made[-1]

    yield make
    for j in made:
        j.close()


@pytest.mark.parametrize("backend", ["tcp", "rpc"])  # both keep it: they share control.py
def test_silent_connections_from_one_address_do_not_keep_another_out(start_worker, junk, tmp_path, backend):
    worker = start_worker("--backend", backend)
    junk(worker.address, 40)
    worker.wait_log("refused 127.0.0.1")
    # well within the 3 s a silent connection may keep its slot: only fairness lets this in
    doc = run(_cfg(tmp_path, "fair", stages=(worker.address,), source_address="127.0.0.2", connect_timeout_s=2,
                   backend=backend))
    assert doc["status"] == "ok"
    assert "from the source (127.0.0.2:" in worker.log()


def test_source_prints_the_workers_reason_for_a_refusal(start_worker, junk, tmp_path, capsys, caplog):
    worker = start_worker()
    junk(worker.address, MAX_PENDING_PER_PEER, auth=True)  # they hold their slots for 10 s
    junk(worker.address, 4)
    worker.wait_log("refused 127.0.0.1")
    caplog.set_level(logging.WARNING, logger="paretopipe.transport.control")
    rc = cli_main(["run", "--model", "resnet18", "--split", "5", "--stages", worker.address, "--batch-size", "2",
                   "--input-size", "64", "--batches", "2", "--warmup", "1", "--min-batches", "1", "--threads", "1",
                   "--connect-timeout", "2", "--out", str(tmp_path / "turned-away.json")])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"stage 1 ({worker.address}): refused: too many connections from 127.0.0.1 are waiting" in err
    assert "gave up after waiting" in err
    assert "waiting, the worker turned us away: too many connections from 127.0.0.1" in caplog.text
    assert "peer closed the connection" not in err


def test_source_told_to_wait_retries_and_gets_in_once_a_slot_frees(start_worker, junk, tmp_path, caplog):
    worker = start_worker()
    flood = junk(worker.address, MAX_PENDING_PER_PEER, renew_s=3600)  # not renewed: they hold their slots
    result: dict = {}

    def source() -> None:
        try:
            result["doc"] = run(_cfg(tmp_path, "waited", stages=(worker.address,), connect_timeout_s=20))
        except Exception as exc:  # noqa: BLE001 - the test asserts on it
            result["error"] = exc

    with caplog.at_level(logging.WARNING, logger="paretopipe.transport.control"):
        t = threading.Thread(target=source)
        t.start()
        said = poll_until(lambda: "waiting, the worker turned us away" in caplog.text or not t.is_alive(), 20)
        flood.close()  # the slots free
        t.join(60)
    assert said and "too many connections from 127.0.0.1" in caplog.text
    assert "error" not in result, result.get("error")
    assert result["doc"]["status"] == "ok"


def _hold(address: str, session_id: int, run_id: str) -> socket.socket:
    """A session held open on the worker (its source says HELLO and waits)."""
    spec = SessionSpec(session_id=session_id, model="resnet18", num_classes=10, input_size=64, splits=(5,),
                       stage_index=1, num_stages=2, batch_size=2, dtype="float32",
                       weights={"kind": "random", "seed": 0}, next_address=None, window=1, timeout_s=20,
                       threads=1, run_id=run_id).to_json()
    sock = socket.create_connection(parse_address(address), timeout=30)
    reader = FrameReader(sock)
    client_auth(sock, reader, None, peer="worker")
    send_json(sock, MsgType.HELLO, spec, session_id=session_id)
    reader.control_json([MsgType.READY])
    return sock


def test_busy_worker_refusal_names_the_session_that_holds_it(start_worker, tmp_path, caplog):
    worker = start_worker()
    held = _hold(worker.address, 55, "sweep-a/resnet18-s5-b2")
    try:
        holder = held.getsockname()
        with caplog.at_level(logging.WARNING, logger="paretopipe.transport.control"):
            with pytest.raises(RunFailed) as exc:
                run(_cfg(tmp_path, "busy", stages=(worker.address,), connect_timeout_s=20))
    finally:
        held.close()
    message = str(exc.value)
    assert (f"busy with session 55 (run sweep-a/resnet18-s5-b2) from the source ({holder[0]}:{holder[1]}); "
            f"it serves one session at a time") in message
    assert "waiting" not in caplog.text  # busy is not waited out


def test_busy_refusal_frame_carries_code_and_holder(start_worker):
    worker = start_worker()
    held = _hold(worker.address, 56, "run-x")
    try:
        sock = socket.create_connection(parse_address(worker.address), timeout=30)
        reader = FrameReader(sock)
        client_auth(sock, reader, None, peer="worker")
        spec = SessionSpec(
            session_id=57, model="resnet18", num_classes=10, input_size=64, splits=(5,), stage_index=1,
            num_stages=2, batch_size=2, dtype="float32", weights={"kind": "random", "seed": 0}, next_address=None,
            window=1, timeout_s=20).to_json()
        send_json(sock, MsgType.HELLO, spec, session_id=57)
        _, raw = reader.control([MsgType.REFUSED])
        sock.close()
    finally:
        held.close()
    obj = json.loads(raw)
    assert obj["code"] == RefusalCode.BUSY.value
    assert obj["holder"]["session_id"] == 56 and obj["holder"]["run_id"] == "run-x"
    assert obj["holder"]["peer"].startswith("the source (127.0.0.1:")


def test_slow_preamble_is_cut_at_the_auth_deadline(start_worker):
    """A byte a second never trips a per-receive timeout; the deadline counts from accept."""
    worker = start_worker()
    sock = socket.create_connection(parse_address(worker.address), timeout=10)
    reader = FrameReader(sock)
    reader.control([MsgType.CHALLENGE])
    deadline = time.monotonic() + 15
    refused = None
    while refused is None and time.monotonic() < deadline:
        try:
            sock.sendall(b"P")
        except OSError:
            break
        sock.settimeout(1.0)
        try:
            reader.control([MsgType.AUTH_OK])
        except ReceiveTimeout:
            continue
        except Exception as exc:  # noqa: BLE001 - the refusal, asserted below
            refused = exc
    sock.close()
    assert refused is not None and "no complete AUTH within 3 s" in str(refused)
    assert "no complete AUTH within 3 s" in worker.wait_log("no complete AUTH")


# ------------------------------------------------------------------ the table's rules, on a fake clock


def test_table_caps_each_address_and_says_when_to_retry():
    table = PendingTable(Limits(total=32, per_peer=2, auth_timeout_s=3, preamble_timeout_s=10))
    assert table.admit("10.0.0.1", "10.0.0.1:1", 0.0).entry
    assert table.admit("10.0.0.1", "10.0.0.1:2", 1.0).entry
    refused = table.admit("10.0.0.1", "10.0.0.1:3", 1.5)
    assert refused.entry is None and refused.code == RefusalCode.TOO_MANY_PENDING
    assert refused.retry_after_s == pytest.approx(1.5)  # the oldest's AUTH deadline, at 3.0
    assert table.admit("10.0.0.2", "10.0.0.2:1", 1.5).entry  # another address is not held up


def test_table_full_evicts_the_oldest_of_the_heaviest_address():
    table = PendingTable(Limits(total=4, per_peer=3, auth_timeout_s=3, preamble_timeout_s=10))
    a = [table.admit("10.0.0.1", f"a{i}", float(i)).entry for i in range(3)]
    b = table.admit("10.0.0.2", "b0", 0.5).entry
    new = table.admit("10.0.0.3", "c0", 4.0)
    assert new.entry and new.evicted == (a[0],)
    assert a[0].dropped[0] == RefusalCode.EVICTED and b.dropped is None
    assert not table.identified(a[0]) and table.identified(b)
    assert len(table) == 3


def test_table_deadlines_cover_silence_and_a_half_finished_handshake():
    table = PendingTable(Limits(total=8, per_peer=8, auth_timeout_s=3, preamble_timeout_s=10))
    silent = table.admit("h", "silent", 0.0).entry
    half = table.admit("h", "half", 0.0).entry
    table.authenticated(half)  # authenticated, then nothing
    assert table.expire(2.9) == []
    assert table.expire(3.0) == [silent] and "no complete AUTH within 3 s" in silent.dropped[1]
    assert table.expire(9.9) == []
    assert table.expire(10.0) == [half] and "no HELLO or JOIN within 10 s" in half.dropped[1]
    assert len(table) == 0
