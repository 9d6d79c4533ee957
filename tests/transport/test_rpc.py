"""The PyTorch RPC backend: same logits and result files as TCP, clear failures, port reuse.

Workers are real `paretopipe stage serve --backend rpc` processes on loopback (stopped by PID by
the fixtures); the source runs in this process, as in test_end_to_end.py, except where a test
needs a fresh source process.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from paretopipe.errors import ConfigError, StageError
from paretopipe.results import read_result, validate_result
from paretopipe.runtime.source import RunConfig, RunFailed, run
from paretopipe.runtime.sweep import free_port
from paretopipe.runtime.worker import FAULT_ENV
from paretopipe.splitting import build_stages, stage_io_shapes
from paretopipe.transport import get_backend
from paretopipe.transport.base import SessionPlan, SessionSpec
from paretopipe.transport.rpc import RpcSourceLink
from paretopipe.transport.rpc_group import RpcOptions, apply_cli_options, interface_for_address, require_rpc_support
from paretopipe.transport.wire import FrameReader, MsgType, send_control, send_json, server_auth

from tests.conftest import REPO, WorkerFactory

SMALL = {"batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "threads": 1, "connect_timeout_s": 30,
         "timeout_s": 30}


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """One TCP and two RPC workers, shared by the happy-path tests."""
    factory = WorkerFactory(tmp_path_factory.mktemp("rpc-workers"))
    try:
        started = factory(wait=False), factory("--backend", "rpc", wait=False), factory("--backend", "rpc", wait=False)
        for w in started:
            w.wait_log("listening on")
        yield {"tcp": started[0], "rpc": started[1], "rpc2": started[2]}
    finally:
        factory.stop_all()


def _spec(splits: tuple[int, ...], *, batch_size: int = 2, window: int = 1) -> SessionSpec:
    return SessionSpec(session_id=int.from_bytes(os.urandom(7), "big"), model="resnet18", num_classes=10, input_size=64,
                       splits=splits, stage_index=1, num_stages=len(splits) + 1, batch_size=batch_size,
                       dtype="float32", weights={"kind": "random", "seed": 0}, next_address=None, window=window,
                       timeout_s=20.0, threads=1, seed=0)


def _logits_over(backend: str, addresses: tuple[str, ...], inputs: list[torch.Tensor], splits: tuple[int, ...]) -> list[torch.Tensor]:
    """Drive a backend's SourceLink directly: head on this side, tail on the worker(s)."""
    head = build_stages("resnet18", splits, num_classes=10, seed=0)[0]
    _, head_out = stage_io_shapes("resnet18", splits, 0, batch_size=2, input_size=64, num_classes=10)
    link = get_backend(backend).source_link()
    try:
        link.open(SessionPlan(addresses=addresses, spec=_spec(splits), head_out_shape=tuple(head_out),
                              logits_shape=(2, 10), token=None, connect_timeout_s=20.0))
        out = []
        with torch.inference_mode():
            for i, x in enumerate(inputs):
                link.send(i, head(x).contiguous())
                res = link.recv(20.0)
                assert res.batch_id == i and len(res.records) == len(splits)
                out.append(res.logits.clone())
        stats = link.finish()
        assert [s["index"] for s in stats] == list(range(1, len(splits) + 1))
        return out
    finally:
        link.close()


def test_both_backends_give_identical_logits(workers):
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(3)]
    tcp = _logits_over("tcp", (workers["tcp"].address,), inputs, (5,))
    rpc = _logits_over("rpc", (workers["rpc"].address,), inputs, (5,))
    reference = build_stages("resnet18", (), num_classes=10, seed=0)[0]
    with torch.inference_mode():
        unsplit = [reference(x) for x in inputs]
    for a, b, ref in zip(tcp, rpc, unsplit):
        assert torch.equal(a, b)  # bit for bit: same stages, same inputs, only the transport differs
        assert torch.allclose(a, ref, atol=1e-5)
    assert not torch.equal(rpc[0], rpc[1])  # the batches really were different


@pytest.mark.slow
def test_rpc_three_stage_chain_pipelined_writes_the_tcp_schema(workers, tmp_path):
    doc = run(RunConfig(model="resnet18", splits=(3, 9), stages=(workers["rpc"].address, workers["rpc2"].address),
                        out=tmp_path / "chain.json", batches=4, window=3, check=True, backend="rpc", **SMALL))
    assert doc["status"] == "ok" and doc["check"]["ok"] and doc["check"]["max_abs_diff"] <= 1e-5
    on_disk = read_result(tmp_path / "chain.json")
    assert validate_result(on_disk) == []
    assert on_disk["config"]["backend"] == "rpc" and on_disk["run_id"] == "resnet18-s3_9-rpc-none-b2-w3-r0"
    for b in on_disk["batches"]:
        assert len(b["compute_s"]) == 3 and all(c > 0 for c in b["compute_s"])
        assert len(b["hops"]) == 3 and b["hops"][-1]["bytes"] == 2 * 10 * 4  # the logits return to the source
        assert all(h["transfer_s"] >= 0 for h in b["hops"])
        assert sum(b["compute_s"]) + sum(h["transfer_s"] for h in b["hops"]) <= b["latency_s"] * 1.05
    assert [s["index"] for s in on_disk["summary"]["stages"]] == [0, 1, 2]


@pytest.mark.slow
def test_sweeps_with_both_backends_write_comparable_files(tmp_path):
    pytest.importorskip("analysis.loading")
    from analysis.loading import load_results

    outs = {}
    for backend in ("tcp", "rpc"):
        outs[backend] = tmp_path / f"sweep-{backend}"
        proc = subprocess.run(
            [sys.executable, "-m", "paretopipe", "sweep", "--model", "resnet18", "--splits", "5", "--backend", backend,
             "--input-size", "64", "--batch-size", "2", "--batches", "3", "--warmup", "1", "--min-batches", "1",
             "--threads", "1", "--timeout", "30", "--connect-timeout", "30", "--out", str(outs[backend])],
            check=False, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = {b: read_result(next(p for p in out.glob("*.json"))) for b, out in outs.items()}
    assert docs["tcp"].keys() == docs["rpc"].keys()
    assert docs["tcp"]["summary"].keys() == docs["rpc"]["summary"].keys()
    assert docs["tcp"]["batches"][0].keys() == docs["rpc"]["batches"][0].keys()
    assert docs["tcp"]["summary"]["hops"][0]["bytes"] == docs["rpc"]["summary"]["hops"][0]["bytes"]
    loaded = load_results([outs["tcp"], outs["rpc"]])
    assert not loaded.skipped, loaded.skipped
    by_backend = {r.backend: r for r in loaded.runs}
    assert set(by_backend) == {"tcp", "rpc"}
    assert by_backend["tcp"].splits == by_backend["rpc"].splits == (5,)
    assert by_backend["tcp"].metrics.keys() == by_backend["rpc"].metrics.keys()


@pytest.mark.slow
def test_two_sessions_in_a_row_on_one_master_port(workers, tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    for i in range(2):  # in this process: the second session reuses the master store on the port
        doc = run(RunConfig(model="resnet18", splits=(7,), stages=(workers["rpc"].address,),
                            out=tmp_path / f"in-process-{i}.json", batches=2, backend="rpc", **SMALL))
        assert doc["status"] == "ok"
    # fresh source processes, as `paretopipe run` and the sweep start them, one after the other;
    # the port given as an argument this time
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    for i in range(2):
        out = tmp_path / f"process-{i}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "paretopipe", "run", "--backend", "rpc", "--model", "resnet18", "--split", "7",
             "--stages", workers["rpc"].address, "--input-size", "64", "--batch-size", "2", "--batches", "2",
             "--warmup", "1", "--min-batches", "1", "--threads", "1", "--timeout", "30", "--out", str(out),
             "--rpc-master", f"127.0.0.1:{port}", "--rpc-ifname", "lo"],
            check=False, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert read_result(out)["status"] == "ok"
    log = workers["rpc"].log()
    assert log.count(f"joined the RPC group at 127.0.0.1:{port}") == 2


def test_unreachable_stage_is_a_one_line_error_naming_it(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RunFailed) as err:
        run(RunConfig(model="resnet18", splits=(5,), stages=(address,), out=tmp_path / "x.json", batches=2,
                      backend="rpc", **{**SMALL, "connect_timeout_s": 1.0}))
    assert f"could not connect to stage 1 at {address}" in str(err.value) and "\n" not in str(err.value)
    assert read_result(tmp_path / "x.json")["status"] == "failed"


class SilentRpcStage:
    """A control server that answers the handshake like a worker but never joins the RPC group."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.join: dict | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            reader = FrameReader(conn)
            server_auth(conn, reader, None)
            while True:
                hdr, _ = reader.control([MsgType.PING, MsgType.HELLO])
                if hdr.msg_type == MsgType.HELLO:
                    break
                send_control(conn, MsgType.PONG, t_send=time.monotonic())
            send_json(conn, MsgType.READY, {"index": 1, "in_shape": [2, 64, 16, 16], "out_shape": [2, 10],
                                            "dtype": "float32", "device": "cpu"})
            _, self.join = reader.control_json([MsgType.JOIN])
            try:
                conn.recv(1)  # until the source hangs up
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def test_stage_that_never_joins_the_rpc_group_times_out_naming_it():
    stage = SilentRpcStage()
    link = RpcSourceLink(RpcOptions(master_addr="127.0.0.1"))
    try:
        with pytest.raises(StageError) as err:
            link.open(SessionPlan(addresses=(stage.address,), spec=_spec((5,)), head_out_shape=(2, 64, 16, 16),
                                  logits_shape=(2, 10), token=None, connect_timeout_s=3.0))
    finally:
        link.close()
        stage.close()
    # how long it takes (the connect timeout, not torch's 30 minutes): benchmarks/bench_failure_bounds.py
    msg = str(err.value)
    assert f"stage 1 ({stage.address}) did not reach the RPC master at 127.0.0.1:" in msg and "\n" not in msg
    assert stage.join is not None and stage.join["rank"] == 1 and stage.join["world_size"] == 2


def test_worker_dying_mid_run_names_the_stage(start_worker, tmp_path):
    worker = start_worker("--backend", "rpc", env={FAULT_ENV: "2"})
    with pytest.raises(RunFailed) as err:
        run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "dead.json",
                      batches=6, backend="rpc", **{**SMALL, "timeout_s": 10}))
    assert f"stage 1 ({worker.address}) failed" in str(err.value)
    doc = read_result(tmp_path / "dead.json")
    assert doc["status"] == "failed" and doc["config"]["backend"] == "rpc"
    worker.proc.wait(timeout=10)
    assert worker.proc.returncode == 17  # the injected crash, not a hang


def test_options_from_environment_and_interface_lookup():
    opts = RpcOptions.from_env({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501", "TP_SOCKET_IFNAME": "eth0"})
    assert (opts.master_addr, opts.master_port, opts.tp_ifname, opts.gloo_ifname) == ("10.0.0.1", 29501, "eth0", None)
    assert RpcOptions.from_env({}) == RpcOptions()
    with pytest.raises(ConfigError, match="MASTER_PORT"):
        RpcOptions.from_env({"MASTER_PORT": "http"})
    assert interface_for_address("127.0.0.1") == "lo"
    assert interface_for_address("127.0.0.5") == "lo"  # held by lo's 127.0.0.0/8
    with pytest.raises(ConfigError, match="TP_SOCKET_IFNAME"):
        interface_for_address("0.0.0.0")
    nobodys = "198.51.100.77"  # TEST-NET-2, unless this host's own network happens to be there
    if any(a.address.startswith("198.51.100.") for addrs in psutil.net_if_addrs().values() for a in addrs):
        pytest.skip("this host has an interface in 198.51.100.0/24")
    with pytest.raises(ConfigError, match="no network interface"):
        interface_for_address(nobodys)


def test_master_port_in_use_is_an_error_naming_it(workers, tmp_path, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(port))
        with pytest.raises(RunFailed, match=f"RPC master port {port} on 127.0.0.1 is already in use"):
            run(RunConfig(model="resnet18", splits=(5,), stages=(workers["rpc"].address,), out=tmp_path / "p.json",
                          batches=2, backend="rpc", **SMALL))
    # the worker was told to join and then left alone: it must serve the next session
    monkeypatch.delenv("MASTER_PORT")
    doc = run(RunConfig(model="resnet18", splits=(5,), stages=(workers["rpc"].address,), out=tmp_path / "q.json",
                        batches=2, backend="rpc", **SMALL))
    assert doc["status"] == "ok"



@pytest.mark.slow
def test_source_killed_mid_run_worker_leaves_the_group_and_serves_the_next_session(start_worker, tmp_path):
    worker = start_worker("--backend", "rpc")
    proc = subprocess.Popen(
        [sys.executable, "-m", "paretopipe", "run", "--backend", "rpc", "--model", "resnet18", "--split", "5",
         "--stages", worker.address, "--duration", "600", "--warmup", "0", "--input-size", "64", "--batch-size", "2",
         "--threads", "1", "--out", str(tmp_path / "killed.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        worker.wait_log("joined the RPC group")
        worker.wait_log("first batch computed")  # batches are flowing
    finally:
        proc.kill()
        proc.wait()
    worker.wait_log("aborted")
    doc = run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "after.json",
                        batches=2, backend="rpc", **SMALL))
    assert doc["status"] == "ok"


def test_cli_options_set_the_environment_the_backend_reads(monkeypatch):
    for var in ("MASTER_ADDR", "MASTER_PORT", "TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        # setenv first so that monkeypatch records the variable and removes what
        # apply_cli_options writes into os.environ when the test ends; delenv alone on an
        # unset variable records nothing and the values would leak into later tests.
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    apply_cli_options(backend="rpc", master="10.0.0.1:29400", ifname="eth1")
    assert RpcOptions.from_env() == RpcOptions("10.0.0.1", 29400, "eth1", "eth1")
    apply_cli_options(backend="rpc", master="[fd00::1]")
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("fd00::1", "29400")
    with pytest.raises(ConfigError, match="HOST or HOST:PORT"):
        apply_cli_options(backend="rpc", master="10.0.0.1:http")
    with pytest.raises(ConfigError, match="--rpc-master only applies to --backend rpc"):
        apply_cli_options(backend="tcp", master="10.0.0.1")
    apply_cli_options(backend="tcp")  # nothing given: nothing to say


def test_token_guards_the_control_connection(start_worker, tmp_path):
    token, wrong = tmp_path / "token", tmp_path / "wrong"
    token.write_text("s3cret-token\n")
    wrong.write_text("not-the-token\n")
    worker = start_worker("--backend", "rpc", "--token-file", str(token))
    with pytest.raises(StageError, match="refused our token"):
        run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "bad.json", batches=2,
                      backend="rpc", token_file=str(wrong), **SMALL))
    doc = run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "ok.json", batches=2,
                        backend="rpc", token_file=str(token), **SMALL))
    assert doc["status"] == "ok"


def test_this_torch_can_run_the_rpc_backend():
    require_rpc_support()  # every internal the backend relies on is there
    assert get_backend("rpc").name == "rpc"


@pytest.mark.parametrize("missing", ["_init_counter_lock", "api._all_gather_sequence_id"])
def test_a_torch_without_the_rpc_internals_is_a_clear_config_error(monkeypatch, tmp_path, missing):
    """A torch upgrade that drops what the backend relies on is named at once, before anything
    runs or is written, with the way out: the TCP backend."""
    from torch.distributed import rpc

    owner = rpc.api if missing.startswith("api.") else rpc
    monkeypatch.delattr(owner, missing.removeprefix("api."))
    with pytest.raises(ConfigError, match=re.escape(f"lacks: rpc.{missing}; use --backend tcp")):
        get_backend("rpc")
    out = tmp_path / "r.json"
    with pytest.raises(ConfigError, match="use --backend tcp"):
        run(RunConfig(model="resnet18", splits=(5,), stages=("127.0.0.1:9",), out=out, backend="rpc", batches=1))
    assert not out.exists()
    assert get_backend("tcp").name == "tcp"
