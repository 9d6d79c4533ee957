"""up / down / status on real namespaces: idempotent, complete teardown, rollback, SSH."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paretopipe import testbed as tb
from paretopipe.errors import TestbedError
from paretopipe.netcond import Condition
from paretopipe.testbed import _system
from paretopipe.testbed._ssh import ssh_argv
from paretopipe.testbed._state import Paths
from paretopipe.testbed.topology import load_topology
from tests.testbed.conftest import netns_unavailable, write_topology

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _needs_netns():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)


def snapshot(prefix: str) -> dict:
    """Everything of the kind the testbed makes, counted system-wide where nobody else makes it
    and by this test's prefix where other testbeds may run beside it."""
    tops = [p for c in ("cpu", "cpuset", "memory", ".")
            for p in Path(f"/sys/fs/cgroup/{c}").glob(f"paretopipe-{prefix}")]
    cg_dirs = sorted(str(d) for top in tops for d in [top, *top.iterdir()] if d.is_dir())
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    return {
        "netns": sorted(n for n in _system.netns_list() if n.startswith(f"{prefix}-")),
        "links": sorted(n for n in _system.links() if prefix in n),
        "root_qdiscs": sorted(line for line in qdiscs.splitlines() if prefix in line),
        "cgroups": cg_dirs,
        "root_iptables_rules": sum(1 for line in rules.splitlines() if line.startswith("-A")),
    }


def test_up_twice_then_down_leaves_nothing_behind(tmp_path):
    topo_file, p = write_topology(tmp_path / "t.yml", "ppu", 8)
    state = tmp_path / "state"
    tb.down(state_dir=state, topology=topo_file)
    before = snapshot(p)
    assert before["netns"] == [] and before["links"] == [] and before["cgroups"] == []
    stray = None
    try:
        first = tb.up(topo_file, state_dir=state, inventory=tmp_path / "hosts.yml")
        assert first["changed"]
        during = snapshot(p)
        assert during["netns"] == [f"{p}-gpu", f"{p}-pi1", f"{p}-pi2"]
        assert during["links"] == [f"br-{p}", f"{p}-gpu", f"{p}-pi1", f"{p}-pi2"]
        assert len(during["cgroups"]) == 3 * 4  # cpu, cpuset, memory x (parent + 3 devices)
        again = tb.up(topo_file, state_dir=state, inventory=tmp_path / "hosts.yml")
        assert again["changed"] is False and again["actions"] == []
        assert snapshot(p) == during

        # Things down must also clean: a condition with delay lines, ifbs and iptables rules,
        # and a process a user left running on a device over SSH.
        tb.shape(Condition("t", delay_ms=2, loss_pct=1, rate_mbit=50), state_dir=state)
        paths = Paths.at(state)
        ip = load_topology(topo_file).device("pi1").ip
        out = subprocess.run(ssh_argv(paths, ip, "nohup sleep 600 >/dev/null 2>&1 & echo $!"),
                             capture_output=True, text=True, timeout=30)
        stray = int(out.stdout.strip())
        assert _system.pid_alive(stray)
        st = tb.status(state_dir=state)
        delaylines = [p["pid"] for p in st["shaping"]["processes"]]
        sshds = [d["sshd_pid"] for d in st["devices"].values()]
        assert len(delaylines) == 3 and all(map(_system.pid_alive, delaylines + sshds))
    finally:
        result = tb.down(state_dir=state)
    assert result["changed"]
    assert snapshot(p) == before
    assert not any(map(_system.pid_alive, delaylines + sshds + [stray]))
    assert not (tmp_path / "hosts.yml").exists()
    assert not (state / "state.json").exists()
    assert tb.down(state_dir=state)["changed"] is False  # down twice is fine too


def test_failed_up_rolls_back_what_it_made(tmp_path):
    topo_file, p = write_topology(tmp_path / "t.yml", "ppf", 7)
    state = tmp_path / "state"
    tb.down(state_dir=state, topology=topo_file)
    before = snapshot(p)

    def fail_at_second_sshd(step: str) -> None:
        if step == "sshd:pi2":
            raise TestbedError("injected failure")

    messages: list[str] = []
    with pytest.raises(TestbedError, match="rolled back: injected failure"):
        tb.up(topo_file, state_dir=state, inventory=tmp_path / "hosts.yml",
              progress=messages.append, _fail_at=fail_at_second_sshd)
    started = [m for m in messages if m.startswith("started sshd for pi1")]
    assert started, messages  # it failed halfway: pi1's sshd was already running
    pid = int(started[0].split("pid ")[1].rstrip(")"))
    assert not _system.pid_alive(pid)
    assert snapshot(p) == before
    assert tb.leftovers(load_topology(topo_file)) == []
    assert not (state / "state.json").exists()


def test_failed_up_leaves_a_foreign_link_alone(tmp_path):
    """A link named like the second device's exists (not ours): up stops there, removes what
    it made for the first device, and does not touch the stranger."""
    topo_file, p = write_topology(tmp_path / "t.yml", "ppf", 7)
    state = tmp_path / "state"
    tb.down(state_dir=state, topology=topo_file)
    subprocess.run(["ip", "link", "add", f"{p}-pi2", "type", "veth", "peer", "name", f"{p}-x"],
                   check=True)
    try:
        with pytest.raises(TestbedError, match=f"{p}-pi2 exists and is not this testbed's"):
            tb.up(topo_file, state_dir=state, inventory=tmp_path / "hosts.yml")
        left = snapshot(p)
        assert left["netns"] == [] and left["cgroups"] == []
        assert left["links"] == [f"{p}-pi2", f"{p}-x"]  # only the stranger
    finally:
        subprocess.run(["ip", "link", "del", f"{p}-pi2"], check=False)
        tb.down(state_dir=state, topology=topo_file)


def test_ssh_reaches_each_device_inside_its_namespace_and_cgroups(testbed):
    paths = Paths.at(testbed.state_dir)
    for dev in testbed.topology.devices:
        out = subprocess.run(
            ssh_argv(paths, dev.ip, "ip -o -4 addr show dev eth0; cat /proc/self/cgroup; "
                     "echo $PARETOPIPE_DEVICE"),
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"inet {dev.ip}/24" in out.stdout
        assert f"cpu:/paretopipe-{testbed.topology.prefix.rstrip('-')}/{dev.name}" in out.stdout
        assert f"memory:/paretopipe-{testbed.topology.prefix.rstrip('-')}/{dev.name}" in out.stdout
        assert out.stdout.strip().endswith(dev.name)


def test_status_and_inventory_describe_the_devices(testbed):
    st = tb.status(state_dir=testbed.state_dir)
    assert st["up"] and st["healthy"] and st["cgroup_version"] in ("v1", "v2")
    net = testbed.topology.controller_ip.rsplit(".", 1)[0]
    assert st["controller_ip"] == f"{net}.1" and net.endswith(".9")
    pi1 = st["devices"]["pi1"]
    assert pi1["ip"] == f"{net}.11" and pi1["netns"] == f"{testbed.topology.prefix}pi1"
    assert pi1["limits"]["cpu_quota"] == 0.5 and pi1["limits"]["memory_bytes"] == 4 << 30
    assert st["devices"]["gpu"]["limits"]["cpu_quota"] is None

    import yaml

    inv = yaml.safe_load(testbed.inventory.read_text())
    assert inv["all"]["vars"]["paretopipe_emulated"] is True
    edge = inv["all"]["children"]["edge"]["hosts"]
    servers = inv["all"]["children"]["servers"]["hosts"]
    assert set(edge) == {"pi1", "pi2"} and set(servers) == {"gpu"}
    host = edge["pi2"]
    assert host["ansible_host"] == host["paretopipe_ip"] == f"{net}.12"
    assert host["ansible_user"] == "root" and host["paretopipe_nic"] == "eth0"
    assert host["paretopipe_profile"] == "rpi4" and host["paretopipe_threads"] == 1
    assert Path(host["paretopipe_workdir"]).is_dir()
    assert Path(host["ansible_python_interpreter"]).exists()
    assert "StrictHostKeyChecking=yes" in host["ansible_ssh_common_args"]


def test_cli_status_json_and_second_up(testbed):
    from tests.conftest import run_cli

    out = run_cli("testbed", "status", "--json", "--state-dir", str(testbed.state_dir))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["healthy"] is True
    out = run_cli("testbed", "up", "--topology", str(testbed.topology_file), "--state-dir",
                  str(testbed.state_dir), "--inventory", str(testbed.inventory))
    assert out.returncode == 0, out.stderr
    assert "already up; nothing changed" in out.stdout
    # --json: stdout is the JSON document alone; the header and progress go to stderr
    out = run_cli("testbed", "up", "--json", "--topology", str(testbed.topology_file), "--state-dir",
                  str(testbed.state_dir), "--inventory", str(testbed.inventory))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["changed"] is False and "testbed up:" in out.stderr
    out = run_cli("testbed", "up", "--state-dir", str(testbed.state_dir))
    assert out.returncode == 2 and "another topology is up" in out.stderr


def test_sshd_that_died_is_restarted_by_up(testbed):
    st = tb.status(state_dir=testbed.state_dir)
    pid = st["devices"]["pi2"]["sshd_pid"]
    _system.terminate([(pid, _system.start_time(pid))])
    assert tb.status(state_dir=testbed.state_dir)["healthy"] is False
    res = tb.up(testbed.topology_file, state_dir=testbed.state_dir, inventory=testbed.inventory)
    assert any(a.startswith("started sshd for pi2") for a in res["actions"])
    deadline = time.monotonic() + 5
    while not tb.status(state_dir=testbed.state_dir)["healthy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tb.status(state_dir=testbed.state_dir)["healthy"]


def test_work_started_over_ssh_is_held_to_the_profile(testbed):
    """rpi4: one pinned core and half a core of CPU time, whatever the process asks for."""
    paths = Paths.at(testbed.state_dir)
    script = ("import os, time; t = time.monotonic()\n"
              "while time.monotonic() - t < 1.0: pass\n"
              "c = os.times(); print(c.user + c.system, time.monotonic() - t)\n")
    # The device runs the controller's interpreter: namespaces share the file system.
    cmd = f"grep Cpus_allowed_list /proc/self/status; {sys.executable} -c '{script}'"
    out = subprocess.run(ssh_argv(paths, testbed.topology.device("pi1").ip, cmd),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[-1] == "0"  # pinned to core 0
    cpu, wall = map(float, lines[1].split())
    assert cpu < 0.65 * wall, (cpu, wall)  # quota 0.5 (+ slack for the period boundary)
