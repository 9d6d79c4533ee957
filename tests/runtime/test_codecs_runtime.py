"""Codecs in whole sessions on loopback: per-hop figures, negotiation, bad input, both backends."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from paretopipe.codecs import parse_codec
from paretopipe.errors import ConfigError, StageError
from paretopipe.results import validate_result
from paretopipe.runtime.source import RunConfig, run
from paretopipe.transport.base import SessionSpec
from paretopipe.transport.wire import FrameReader, MsgType, client_auth, pack_header, send_json

from tests.conftest import REPO
from .test_faults import _raw

SMALL = {"batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "threads": 1, "connect_timeout_s": 30,
         "timeout_s": 30, "batches": 3, "fidelity_batches": 3}
ACT = 2 * 64 * 16 * 16  # resnet18's activation after block 5 at 64 px, batch 2 (elements)


def _cfg(tmp_path, name, **kw) -> RunConfig:
    return RunConfig(out=tmp_path / f"{name}.json", **{**SMALL, "model": "resnet18", "splits": (5,), **kw})


@pytest.mark.parametrize("codec", ["int8", "fp16+lz4"])
def test_codec_run_records_raw_and_wire_bytes_and_times(shared_workers, tmp_path, codec):
    w1, _ = shared_workers
    doc = run(_cfg(tmp_path, codec, stages=(w1.address,), codec=codec))
    assert doc["status"] == "ok" and validate_result(doc) == []
    assert doc["config"]["codec"] == codec and doc["run_id"].endswith(f"-c{codec}-r0")
    for b in doc["batches"]:
        split, back = b["hops"]
        assert split["raw_bytes"] == ACT * 4 and split["encode_s"] > 0 and split["decode_s"] > 0
        if codec == "int8":
            assert split["bytes"] == ACT
        else:
            assert split["bytes"] <= parse_codec(codec).max_wire_bytes(ACT)
        assert back["bytes"] == back["raw_bytes"] == 2 * 10 * 4  # logits return uncoded
        assert back["decode_s"] == 0.0
    hop = doc["summary"]["hops"][0]
    assert hop["ratio"] == pytest.approx(hop["raw_bytes"] / hop["bytes"])
    if codec == "int8":
        assert hop["ratio"] == 4.0
    fid = doc["summary"]["fidelity"]
    assert fid["codec"] == codec and fid["images"] == 6 and fid["batches"] == 3
    assert 0 < fid["max_abs_error"] and 0 < fid["rel_l2_error"] < 0.05


def test_uncoded_run_has_exact_fidelity(shared_workers, tmp_path):
    w1, _ = shared_workers
    doc = run(_cfg(tmp_path, "none", stages=(w1.address,)))
    fid = doc["summary"]["fidelity"]
    assert fid["max_abs_error"] <= 1e-4 and fid["rel_l2_error"] <= 1e-5
    hop = doc["summary"]["hops"][0]
    assert hop["ratio"] == 1.0 and hop["encode_s"] == 0.0


def test_worker_refuses_a_codec_it_does_not_take_naming_both_sides(start_worker, tmp_path):
    worker = start_worker("--codec", "none,fp16")
    with pytest.raises(StageError, match=r"codec mismatch: the source \(127\.0\.0\.1:\d+\) asks for codec 'int8', "
                                         rf"but stage 1 \({worker.address}\) supports none, fp16"):
        run(_cfg(tmp_path, "refused", stages=(worker.address,), codec="int8"))
    assert "refused session" in worker.wait_log("codec mismatch")
    doc = run(_cfg(tmp_path, "accepted", stages=(worker.address,), codec="fp16"))
    assert doc["status"] == "ok"


def test_unknown_codec_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown codec 'int4' \(valid: none, none\+zstd, none\+lz4, fp16"):
        _cfg(tmp_path, "bad", stages=("127.0.0.1:1",), codec="int4").validate()
    with pytest.raises(ConfigError, match="--check compares the logits exactly"):
        _cfg(tmp_path, "chk", stages=("127.0.0.1:1",), codec="int8", check=True).validate()
    proc = subprocess.run([sys.executable, "-m", "paretopipe", "stage", "serve", "--listen", "127.0.0.1:0",
                           "--codec", "none,int4"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "unknown codec 'int4' (valid: none," in proc.stderr


@pytest.mark.slow
def test_corrupt_compressed_payload_fails_that_session_and_the_worker_serves_the_next(start_worker, tmp_path):
    worker = start_worker()
    codec = parse_codec("int8+zstd")
    spec = SessionSpec(session_id=501, model="resnet18", num_classes=10, input_size=64, splits=(5,), stage_index=1,
                       num_stages=2, batch_size=2, dtype="float32", weights={"kind": "random", "seed": 0},
                       next_address=None, window=1, timeout_s=20, threads=1, codec=codec.name).to_json()
    sock = _raw(worker.address)
    reader = FrameReader(sock)
    client_auth(sock, reader, None, peer="worker")
    send_json(sock, MsgType.HELLO, spec, session_id=501)
    sock.settimeout(60)
    reader.control_json([MsgType.READY])
    junk = b"\x28\xb5\x2f\xfd" + bytes(range(200))  # zstd magic, then garbage
    sock.sendall(pack_header(MsgType.DATA, length=len(junk), session_id=501, dtype="float32", shape=(2, 64, 16, 16),
                             codec_id=codec.wire_id, scale=0.1, zero_point=-128) + junk)
    _, raw = reader.control([MsgType.ERROR])
    message = json.loads(raw)["message"]
    assert "batch 0 from the source" in message and "corrupt int8+zstd payload" in message
    sock.close()
    doc = run(_cfg(tmp_path, "after-corrupt", stages=(worker.address,), codec="int8+zstd"))
    assert doc["status"] == "ok" and doc["summary"]["hops"][0]["ratio"] > 4


@pytest.mark.slow
def test_rpc_backend_carries_codecs_too(start_worker, tmp_path):
    worker = start_worker("--backend", "rpc")
    doc = run(_cfg(tmp_path, "rpc-int8", stages=(worker.address,), codec="int8", backend="rpc"))
    assert doc["status"] == "ok"
    split = doc["batches"][0]["hops"][0]
    assert split["bytes"] == ACT and split["raw_bytes"] == ACT * 4 and split["decode_s"] > 0
    assert doc["summary"]["fidelity"]["rel_l2_error"] < 0.05
    refusing = start_worker("--backend", "rpc", "--codec", "none")
    with pytest.raises(StageError, match="codec mismatch: .* asks for codec 'int8', but stage 1 .* supports none"):
        run(_cfg(tmp_path, "rpc-refused", stages=(refusing.address,), codec="int8", backend="rpc"))


def test_runs_sharing_a_reference_cache_compute_the_reference_once(shared_workers, tmp_path, monkeypatch):
    from paretopipe.runtime import reference

    w1, _ = shared_workers
    computed: list[list[int]] = []
    real_init = reference.ReferenceStore.__init__

    def counting_init(self, directory, key, compute):
        real_init(self, directory, key, lambda ids: (computed.append(list(ids)), compute(ids))[1])

    monkeypatch.setattr(reference.ReferenceStore, "__init__", counting_init)
    cache = str(tmp_path / "ref")
    docs = [run(_cfg(tmp_path, f"c{i}", stages=(w1.address,), codec=c, reference_cache=cache))
            for i, c in enumerate(("none", "int8", "none"))]
    assert len(computed) == 1  # the first run computed the reference; the others read it
    assert len(list((tmp_path / "ref").glob("*.pt"))) == 1
    for doc in docs:
        assert doc["status"] == "ok" and doc["summary"]["fidelity"]["batches"] == 3
    assert docs[2]["summary"]["fidelity"]["max_abs_error"] <= 1e-4  # the kept reference is the right one
    assert docs[1]["summary"]["fidelity"]["max_abs_error"] > 0
