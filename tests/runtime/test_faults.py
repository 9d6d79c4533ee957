"""Bad input and faults: the worker refuses, logs why, and goes on serving; the source names the
stage that failed and writes a partial result file marked failed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from paretopipe.errors import StageError
from paretopipe.results import read_result, validate_result
from paretopipe.runtime.source import RunConfig, RunFailed, run
from paretopipe.runtime.worker import FAULT_ENV
from paretopipe.transport.base import SessionSpec
from paretopipe.transport.control import parse_address
from paretopipe.transport.wire import (
    HEADER_SIZE,
    FrameReader,
    MsgType,
    client_auth,
    pack_header,
    send_json,
)

SMALL = {"batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "threads": 1, "connect_timeout_s": 30,
         "timeout_s": 20}


def _cfg(tmp_path: Path, name: str, **kw) -> RunConfig:
    return RunConfig(out=tmp_path / f"{name}.json", **{**SMALL, "batches": 2, **kw})


def _ok_session(worker, tmp_path: Path, name: str) -> None:
    doc = run(_cfg(tmp_path, name, model="resnet18", splits=(5,), stages=(worker.address,)))
    assert doc["status"] == "ok"


def _raw(address: str) -> socket.socket:
    return socket.create_connection(parse_address(address), timeout=10)


def _after_challenge(address: str) -> socket.socket:
    sock = _raw(address)
    FrameReader(sock).control([MsgType.CHALLENGE])
    return sock


def _spec(stage_index: int, num_stages: int, splits: tuple[int, ...], **kw) -> dict:
    return SessionSpec(session_id=kw.pop("session_id", 7), model="resnet18", num_classes=10, input_size=64,
                       splits=splits, stage_index=stage_index, num_stages=num_stages, batch_size=2,
                       dtype="float32", weights={"kind": "random", "seed": 0}, next_address=None, window=1,
                       timeout_s=20, threads=1).to_json() | kw


def _hello(address: str, spec: dict) -> tuple[socket.socket, FrameReader, dict]:
    sock = _raw(address)
    reader = FrameReader(sock)
    client_auth(sock, reader, None, peer="worker")
    send_json(sock, MsgType.HELLO, spec, session_id=spec["session_id"])
    sock.settimeout(60)
    _, ready = reader.control_json([MsgType.READY])
    return sock, reader, ready


def test_garbage_bad_magic_huge_length_truncated_then_still_serving(start_worker, tmp_path):
    worker = start_worker()
    # garbage bytes
    s = _after_challenge(worker.address)
    s.sendall(os.urandom(HEADER_SIZE))
    s.close()
    # right size, wrong magic
    s = _after_challenge(worker.address)
    s.sendall(b"XXXX" + pack_header(MsgType.AUTH)[4:])
    s.close()
    # a huge declared length: refused from the header alone
    s = _after_challenge(worker.address)
    s.sendall(pack_header(MsgType.AUTH, length=1 << 40))
    s.close()
    # a truncated frame
    s = _after_challenge(worker.address)
    s.sendall(pack_header(MsgType.AUTH)[:50])
    s.close()
    log = worker.wait_log("in the middle of a frame header")
    assert "bad magic" in log
    assert f"declared payload of {1 << 40} bytes exceeds the limit" in log
    assert log.count("refused 127.0.0.1") >= 4
    _ok_session(worker, tmp_path, "after-garbage")


def test_bad_frames_inside_a_session_end_it_and_the_next_session_works(start_worker, tmp_path):
    worker = start_worker()
    cases = (((2, 64, 16, 16), 1 << 40, "exceeds the limit"),
             ((2, 3, 64, 64), 2 * 3 * 64 * 64 * 4, "expects float32[2,64,16,16]"))
    for i, (shape, length, complaint) in enumerate(cases):
        sock, reader, ready = _hello(worker.address, _spec(1, 2, (5,), session_id=100 + i))
        assert ready["in_shape"] == [2, 64, 16, 16]
        header = pack_header(MsgType.DATA, length=length, session_id=100 + i, batch_id=0, dtype="float32", shape=shape)
        sock.sendall(header)
        _, raw = reader.control([MsgType.ERROR])
        assert complaint in json.loads(raw)["message"]
        sock.close()
    # a truncated payload: the source stops mid-frame
    sock, reader, _ = _hello(worker.address, _spec(1, 2, (5,), session_id=102))
    sock.sendall(pack_header(MsgType.DATA, length=2 * 64 * 16 * 16 * 4, session_id=102, dtype="float32",
                             shape=(2, 64, 16, 16)) + b"\0" * 1000)
    sock.close()
    log = worker.wait_log("session 102 aborted")
    assert "session 100 aborted" in log and "session 101 aborted" in log
    _ok_session(worker, tmp_path, "after-bad-frames")


def test_second_session_is_refused_while_one_runs(start_worker, tmp_path):
    worker = start_worker()
    sock, _, _ = _hello(worker.address, _spec(1, 2, (5,), session_id=55))
    try:
        with pytest.raises(StageError, match="busy with session 55.*one session at a time"):
            run(_cfg(tmp_path, "busy", model="resnet18", splits=(5,), stages=(worker.address,)))
    finally:
        sock.close()
    worker.wait_log("session 55 aborted")
    _ok_session(worker, tmp_path, "after-busy")


def test_shape_mismatch_between_workers_is_caught_at_join(start_worker):
    worker = start_worker()
    # the worker becomes stage 2 of 3 and waits for stage 1 to join
    ctrl, ctrl_reader, ready = _hello(worker.address, _spec(2, 3, (3, 9), session_id=77))
    joiner = _raw(worker.address)
    reader = FrameReader(joiner)
    client_auth(joiner, reader, None, peer="worker")
    send_json(joiner, MsgType.JOIN, {"session_id": 77, "from_stage": 1, "address": "10.9.9.9:1",
                                     "shape": [2, 64, 8, 8], "dtype": "float16", "clock_offset_s": 0.0})
    _, raw = reader.control([MsgType.REFUSED])
    reason = json.loads(raw)["reason"]
    assert "shape mismatch between stage 1 (10.9.9.9:1, sends float16[2,64,8,8])" in reason
    assert f"stage 2 ({worker.address}, expects float32[{','.join(map(str, ready['in_shape']))}])" in reason
    _, raw = ctrl_reader.control([MsgType.ERROR])  # the source hears it too
    assert "shape mismatch" in json.loads(raw)["message"]
    ctrl.close()
    joiner.close()


def test_last_stage_output_mismatch_is_caught_at_handshake(start_worker, tmp_path):
    from paretopipe.shards import write_shards

    shards = tmp_path / "shards100"
    write_shards("resnet18", shards, num_classes=100, seed=0)
    worker = start_worker("--shards", str(shards))
    with pytest.raises(StageError, match=r"shape mismatch between stage 1 .*returns float32\[2,100\].* and the "
                                         r"source \(expects logits float32\[2,10\]"):
        run(_cfg(tmp_path, "mismatch", model="resnet18", splits=(5,), stages=(worker.address,)))
    # the same shards serve a session that agrees with them
    doc = run(_cfg(tmp_path, "shards-ok", model="resnet18", splits=(5,), stages=(worker.address,), num_classes=100,
                   check=True))
    assert doc["check"]["ok"]


@pytest.mark.slow
def test_worker_dying_mid_run_names_the_stage_and_writes_a_failed_file(start_worker, tmp_path):
    from paretopipe.cli import main as cli_main

    w1 = start_worker()
    w2 = start_worker(env={FAULT_ENV: "3"})
    out = tmp_path / "dies.json"
    rc = cli_main(["run", "--model", "mobilenet_v2", "--split", "4", "--split", "12", "--stages",
                   f"{w1.address},{w2.address}", "--batches", "20", "--warmup", "1", "--input-size", "64",
                   "--batch-size", "2", "--threads", "1", "--timeout", "20", "--out", str(out)])
    assert rc == 1
    doc = read_result(out)
    assert doc["status"] == "failed"
    assert doc["error"].startswith(f"stage 2 ({w2.address}) failed")
    assert validate_result(doc) == []
    assert 1 <= len(doc["batches"]) <= 2  # 3 computed by stage 2, the first one was warm-up
    assert w2.proc.wait(timeout=10) == 17
    # stage 1 ended its session and serves the next one
    w1.wait_log("aborted")
    doc = run(_cfg(tmp_path, "after-death", model="resnet18", splits=(5,), stages=(w1.address,)))
    assert doc["status"] == "ok"


@pytest.mark.slow
def test_source_killed_mid_run_worker_serves_the_next_session(start_worker, tmp_path):
    worker = start_worker()
    out = tmp_path / "killed.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "paretopipe", "run", "--model", "resnet18", "--split", "5", "--stages",
         worker.address, "--duration", "600", "--warmup", "0", "--input-size", "64", "--batch-size", "2",
         "--threads", "1", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        worker.wait_log("built stage 1")
        worker.wait_log("first batch computed")  # batches are flowing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    worker.wait_log("aborted")
    assert not out.exists()
    _ok_session(worker, tmp_path, "after-kill")


def test_connect_gives_up_at_the_deadline_naming_the_stage(tmp_path):
    from paretopipe.runtime.sweep import free_port

    port = free_port()
    with pytest.raises(RunFailed, match=rf"could not connect to stage 1 at 127.0.0.1:{port}") as info:
        run(_cfg(tmp_path, "noworker", model="resnet18", splits=(5,), stages=(f"127.0.0.1:{port}",),
                 connect_timeout_s=1.0))
    assert info.value.exit_code != 0
    assert read_result(tmp_path / "noworker.json")["status"] == "failed"


def test_port_in_use_is_an_error_naming_the_port(start_worker):
    worker = start_worker()
    port = parse_address(worker.address)[1]
    proc = subprocess.run([sys.executable, "-m", "paretopipe", "stage", "serve", "--listen", worker.address],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
