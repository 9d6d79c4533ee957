"""Who owns the cores: default threads for stages that share a host, and threads that end."""

from __future__ import annotations

from pathlib import Path

import pytest

from paretopipe import threads
from paretopipe.results import read_result
from paretopipe.runtime import cores
from paretopipe.runtime.source import RunConfig, RunFailed, run
from paretopipe.runtime.worker import FAULT_ENV

SMALL = {"batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "connect_timeout_s": 30,
         "timeout_s": 30, "batches": 4}


def _cgroup(tmp_path: Path, lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "self-cgroup"
    proc.write_text(lines)
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root, proc


def test_cgroup_quota_v1_v2_and_none(tmp_path):
    root, proc = _cgroup(tmp_path / "v1", "4:cpu,cpuacct:/pp/pi1\n3:memory:/pp/pi1\n",
                         {"cpu,cpuacct/pp/pi1/cpu.cfs_quota_us": "50000", "cpu,cpuacct/pp/pi1/cpu.cfs_period_us": "100000"})
    assert cores._cgroup_quota(root, proc) == 0.5
    root, proc = _cgroup(tmp_path / "v2", "0::/pp/gpu\n", {"pp/gpu/cpu.max": "150000 100000"})
    assert cores._cgroup_quota(root, proc) == 1.5
    root, proc = _cgroup(tmp_path / "v2max", "0::/x\n", {"x/cpu.max": "max 100000"})
    assert cores._cgroup_quota(root, proc) is None
    root, proc = _cgroup(tmp_path / "unlimited", "4:cpu,cpuacct:/\n",
                         {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cores._cgroup_quota(root, proc) is None
    assert cores._cgroup_quota(tmp_path / "nothing", tmp_path / "no-such-file") is None


def test_usable_cpus_is_affinity_capped_by_quota(monkeypatch):
    monkeypatch.setattr(cores, "_affinity_count", lambda: 4)
    monkeypatch.setattr(cores, "_cgroup_quota", lambda: 0.5)
    assert cores.usable_cpus() == 1  # half a core is one thread
    monkeypatch.setattr(cores, "_cgroup_quota", lambda: 2.5)
    assert cores.usable_cpus() == 3
    monkeypatch.setattr(cores, "_cgroup_quota", lambda: None)
    assert cores.usable_cpus() == 4


def test_threads_divide_the_cores_of_a_shared_host():
    assert [cores.threads_for(n, cpus=2) for n in (1, 2, 3)] == [2, 1, 1]
    assert [cores.threads_for(n, cpus=16) for n in (1, 2, 3)] == [16, 8, 5]


def test_local_addresses():
    assert cores.is_local_address("127.0.0.1:29500") and cores.is_local_address("localhost:1")
    assert cores.is_local_address("[::1]:5") and cores.is_local_address("127.0.0.5:1")
    assert not cores.is_local_address("no-such-host.invalid:1")
    ips = cores._local_ips() - {"127.0.0.1", "::1"}
    if ips:
        ip = sorted(ips)[0]
        assert cores.is_local_address(f"[{ip}]:1" if ":" in ip else f"{ip}:1")


def test_defaults_divide_a_shared_host_and_the_file_says_so(start_worker, tmp_path):
    worker = start_worker(threads=None)  # no --threads anywhere: the defaults decide
    doc = run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "d.json", **SMALL))
    expected = cores.threads_for(2)
    stages = read_result(tmp_path / "d.json")["config"]["stages"]
    assert [(s["threads"], s["shared_host"]) for s in stages] == [(expected, True), (expected, True)]
    assert [s["threads"] for s in doc["summary"]["stages"]] == [expected, expected]
    assert all(e["boot_id"] == cores.boot_id() for e in doc["environment"]["stages"])
    # k=0: the source has no blocks, so the worker alone shares out the cores; the source keeps one
    doc = run(RunConfig(model="resnet18", splits=(0,), stages=(worker.address,), out=tmp_path / "z.json", **SMALL))
    assert [s["threads"] for s in doc["config"]["stages"]] == [1, cores.threads_for(1)]
    # --threads wins on every stage
    doc = run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "t.json",
                        threads=1, **SMALL))
    assert [s["threads"] for s in doc["config"]["stages"]] == [1, 1]


@pytest.mark.parametrize("window", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_no_thread_outlives_a_run(start_worker, tmp_path, window):
    worker = start_worker()
    run(RunConfig(model="resnet18", splits=(5,), stages=(worker.address,), out=tmp_path / "ok.json",
                  window=window, threads=1, **SMALL))
    assert threads.running() == []  # prefetch, sampler, readers, sender, collector: all joined
    dying = start_worker(env={FAULT_ENV: "2"})
    with pytest.raises(RunFailed):
        run(RunConfig(model="resnet18", splits=(5,), stages=(dying.address,), out=tmp_path / "dead.json",
                      window=window, threads=1, **{**SMALL, "batches": 8}))
    assert threads.running() == []
