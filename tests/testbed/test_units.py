"""Pure parts of the testbed (no root): topology, profiles, cgroup files, inventory, netlink."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
import yaml

from paretopipe.errors import ConfigError, TestbedError
from paretopipe.testbed import delayline, probe
from paretopipe.testbed._ssh import inventory, sshd_config
from paretopipe.testbed._state import Paths
from paretopipe.testbed.cgroups import Cgroups, Limits, allocate_cpus, detect, parse_cpulist
from paretopipe.testbed.topology import load_profiles, load_topology, parse_size


def test_default_topology_is_two_pis_and_a_server_on_a_private_subnet():
    topo = load_topology()
    assert [(d.name, d.group, d.profile, d.ip) for d in topo.devices] == [
        ("pi1", "edge", "rpi4", "10.77.0.11"),
        ("pi2", "edge", "rpi4", "10.77.0.12"),
        ("gpu", "servers", "gpu-server", "10.77.0.21"),
    ]
    assert (topo.bridge, topo.subnet, topo.controller_ip) == ("br-pp", "10.77.0.0/24", "10.77.0.1")
    assert topo.netns("pi1") == "pp-pi1"


def test_profiles_have_quota_threads_and_memory():
    prof = load_profiles()
    assert {"rpi4", "rpi5", "gpu-server"} <= set(prof)
    assert prof["rpi4"].cpu_quota == 0.5 and prof["rpi4"].threads == 1
    assert prof["rpi4"].memory_bytes == 4 << 30 and prof["rpi4"].cpus == 1
    assert prof["gpu-server"].cpus is None and prof["gpu-server"].cpu_quota is None


@pytest.mark.parametrize(("value", "size"), [("4G", 4 << 30), ("512M", 512 << 20),
                                             ("1.5G", 3 << 29), (1024, 1024), (None, None)])
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(("edit", "message"), [
    ("subnet: 8.8.8.0/24", "not private"),
    ("prefix: Bad_", "prefix"),
    ("devices: [{name: pi1, group: edge, profile: rpi9, ip: 10.77.0.11}]", "unknown profile"),
    ("devices: [{name: pi1, group: cloud, profile: rpi4, ip: 10.77.0.11}]", "group"),
    ("devices: [{name: pi1, group: edge, profile: rpi4, ip: 10.77.1.11}]", "not a host address"),
    ("devices: [{name: pi1, group: edge, profile: rpi4, ip: 10.77.0.1}]", "used twice"),
    ("devices: [{name: averyverylongname, group: edge, profile: rpi4, ip: 10.77.0.5}]",
     "exceeds 15"),
    ("devices: [{name: pi1, group: edge, profile: rpi4}]", "missing \\['ip'\\]"),
    ("colour: blue", "unknown keys"),
])
def test_bad_topologies_are_rejected_with_the_fix(tmp_path, edit, message):
    base = yaml.safe_load((load_topology.__globals__["DATA_DIR"] / "topology.yml").read_text())
    base.update(yaml.safe_load(edit))
    path = tmp_path / "t.yml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match=message):
        load_topology(path)


def test_allocate_cpus_round_robin_explicit_and_all():
    got = allocate_cpus([("pi1", 1, None), ("pi2", 1, None), ("pi3", 1, None),
                         ("gpu", None, None), ("x", 2, "1")], [0, 1])
    assert got == {"pi1": [0], "pi2": [1], "pi3": [0], "gpu": [0, 1], "x": [1]}
    with pytest.raises(TestbedError, match="lacks"):
        allocate_cpus([("pi1", 1, "7")], [0, 1])
    assert parse_cpulist("0-2,5\n") == [0, 1, 2, 5]


def _fake_v1(root):
    for c in ("cpu", "cpuset", "memory"):
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")


def test_cgroup_v1_files(tmp_path):
    _fake_v1(tmp_path)
    assert detect(tmp_path) == "v1"
    cg = Cgroups("paretopipe-pp", root=tmp_path)
    made = cg.create("pi1", Limits(cpus="1", mems="0", cpu_quota=0.5, memory_bytes=4 << 30))
    assert len(made) == 6
    d = tmp_path / "cpu" / "paretopipe-pp" / "pi1"
    assert (d / "cpu.cfs_quota_us").read_text() == "50000"
    assert (d / "cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "cpuset" / "paretopipe-pp" / "cpuset.cpus").read_text() == "0,1,2,3"
    assert (tmp_path / "cpuset" / "paretopipe-pp" / "pi1" / "cpuset.cpus").read_text() == "1"
    assert (tmp_path / "memory" / "paretopipe-pp" / "pi1" / "memory.limit_in_bytes"
            ).read_text() == str(4 << 30)
    assert cg.read_limits("pi1") == {"cpu_quota": 0.5, "cpus": "1", "memory_bytes": 4 << 30}
    assert [p.parent.name for p in cg.procs_files("pi1")] == ["pi1"] * 3
    cg.create("gpu", Limits(cpus="0-3", mems="0", cpu_quota=None, memory_bytes=None))
    assert (tmp_path / "cpu" / "paretopipe-pp" / "gpu" / "cpu.cfs_quota_us").read_text() == "-1"


def test_cgroup_v2_files(tmp_path):
    for d in (tmp_path, tmp_path / "paretopipe-pp"):
        d.mkdir(exist_ok=True)
        (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (d / "cgroup.subtree_control").write_text("")
    (tmp_path / "cpuset.cpus.effective").write_text("0-1\n")
    assert detect(tmp_path) == "v2"
    cg = Cgroups("paretopipe-pp", root=tmp_path)
    cg.create("pi1", Limits(cpus="0", mems="0", cpu_quota=0.5, memory_bytes=1 << 30))
    d = tmp_path / "paretopipe-pp" / "pi1"
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "memory.max").read_text() == str(1 << 30)
    assert (d / "cpuset.cpus").read_text() == "0"
    assert cg.host_cpus() == [0, 1]
    # A file written "+memory" last: the fake keeps only the last write, as the kernel would
    # report the union; enough to see that the controllers were asked for.
    assert (tmp_path / "cgroup.subtree_control").read_text().startswith("+")
    (tmp_path / "paretopipe-pp" / "cgroup.controllers").write_text("cpu\n")
    with pytest.raises(TestbedError, match="lacks controllers"):
        cg.create("pi2", Limits(cpus="0", mems="0", cpu_quota=None, memory_bytes=None))


def test_no_cgroups_is_an_error(tmp_path):
    assert detect(tmp_path) is None
    with pytest.raises(TestbedError, match="no usable cgroup"):
        Cgroups("x", root=tmp_path)


def test_inventory_and_sshd_config(tmp_path):
    topo = load_topology()
    paths = Paths(tmp_path)
    dv = {n: {"paretopipe_profile": "rpi4", "paretopipe_threads": 1} for n in topo.names}
    doc = yaml.safe_load(inventory(paths, topo.to_dict(), dv, "/venv/bin/python"))
    gpu = doc["all"]["children"]["servers"]["hosts"]["gpu"]
    assert gpu["ansible_host"] == "10.77.0.21" and gpu["paretopipe_netns"] == "pp-gpu"
    assert gpu["ansible_ssh_private_key_file"] == str(tmp_path / "ssh" / "id_ed25519")
    assert f"UserKnownHostsFile={tmp_path / 'ssh' / 'known_hosts'}" in gpu[
        "ansible_ssh_common_args"]
    assert gpu["ansible_python_interpreter"] == "/venv/bin/python"
    assert gpu["paretopipe_workdir"] == str(tmp_path / "devices" / "gpu")
    assert set(doc["all"]["children"]["edge"]["hosts"]) == {"pi1", "pi2"}
    cfg = sshd_config(paths, "pi1", "10.77.0.11")
    assert "ListenAddress 10.77.0.11:22" in cfg
    assert "PermitRootLogin prohibit-password" in cfg and "PasswordAuthentication no" in cfg


def test_delayline_netlink_messages():
    # One NFQNL_MSG_PACKET with an NFQA_PACKET_HDR for packet id 7, after another attribute.
    hdr_attr = struct.pack("=HH", 4 + 7, 1) + struct.pack("!IHB", 7, 0x0800, 0) + b"\0"
    other = struct.pack("=HH", 8, 9) + b"abcd"
    body = struct.pack("=BBH", 2, 0, 0) + other + hdr_attr
    msg = struct.pack("=IHHII", 16 + len(body), (3 << 8) | 0, 0, 0, 0) + body
    assert delayline.packet_ids(msg + msg) == [7, 7]
    verdict = delayline.verdict_batch_message(5, 42)
    length, kind = struct.unpack_from("=IH", verdict)
    assert length == len(verdict) and kind == (3 << 8) | 3
    assert struct.unpack_from("!H", verdict, 18)[0] == 5  # res_id = queue, big-endian
    assert struct.unpack_from("!II", verdict, 24) == (1, 42)  # NF_ACCEPT up to id 42


def test_probe_payload_is_deterministic():
    assert probe.payload_block(3, 64) == probe.payload_block(3, 64)
    assert probe.payload_block(3, 64) != probe.payload_block(4, 64)


def test_probe_transfer_on_loopback_is_bit_exact_and_timed():
    out: dict = {}

    def receive():
        out["recv"] = probe.recv("127.0.0.1", port, warmup_s=0.0, timeout_s=10, sha=True)

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = threading.Thread(target=receive)
    t.start()
    sent = probe.send("127.0.0.1", port, seconds=None, nbytes=3_000_001, seed=1, sha=True,
                      connect_timeout_s=10)
    t.join(timeout=10)
    assert out["recv"]["bytes"] == sent["bytes"] == 3_000_001
    assert out["recv"]["sha256"] == sent["sha256"]
    assert out["recv"]["rate_mbit"] is None or out["recv"]["rate_mbit"] > 0


def test_shaping_plan_with_and_without_netem():
    from paretopipe.netcond import Condition
    from paretopipe.testbed._shaping import plan

    topo = load_topology()
    cond = Condition("x", delay_ms=20, jitter_ms=2, loss_pct=1, rate_mbit=10)
    user = plan(topo, cond, ["pi1", "pi2"], netem=False)
    assert set(user) == {"pi1", "pi2"} and user["pi1"]["peers"] == ["10.77.0.12"]
    assert user["pi1"]["delayline"] is True
    assert not any("netem" in c for c in user["pi1"]["tc"])
    assert ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", "10.77.0.12/32", "-j",
            "PP-SHAPE"] in user["pi1"]["iptables"]
    kernel = plan(topo, cond, ["pi1", "pi2", "gpu"], netem=True)
    assert kernel["gpu"]["peers"] == ["10.77.0.11", "10.77.0.12"]
    assert kernel["gpu"]["delayline"] is False and kernel["gpu"]["iptables"] == []
    netem_cmds = [c for c in kernel["gpu"]["tc"] if "netem" in c]
    assert netem_cmds == [["tc", "qdisc", "add", "dev", "ifb0", "root", "handle", "10:", "netem",
                           "delay", "20ms", "2ms", "loss", "1%", "limit", "1000"]]
    # Delay only, with netem: no tbf anywhere, netem on the ifb.
    only_delay = plan(topo, Condition("d", delay_ms=5), ["pi1", "pi2"], netem=True)["pi1"]["tc"]
    assert not any("tbf" in c for c in only_delay) and any("netem" in c for c in only_delay)
    # Loss only, without netem: iptables drops, no delay line, no NFQUEUE.
    lossy = plan(topo, Condition("l", loss_pct=2), ["pi1", "pi2"], netem=False)["pi1"]
    assert lossy["delayline"] is False and lossy["tc"] == []
    assert not any("NFQUEUE" in c for c in lossy["iptables"])


def test_leftovers_are_records_shown_as_before_and_undone_by_kind():
    from paretopipe.testbed import Leftover

    ns, cg = Leftover("netns", "ppx-pi1"), Leftover("cgroup", "/sys/fs/cgroup/cpu/paretopipe-ppx/pi1")
    proc = Leftover("process", "4242", "sshd of pi1")
    assert [lo.describe() for lo in (ns, cg, proc)] == [
        "namespace ppx-pi1", "cgroup /sys/fs/cgroup/cpu/paretopipe-ppx/pi1", "process 4242 (sshd of pi1)"]
    assert ns.resource() == {"kind": "netns", "name": "ppx-pi1"}
    assert cg.resource() == {"kind": "cgroup", "path": "/sys/fs/cgroup/cpu/paretopipe-ppx/pi1"}
    assert Leftover("link", "br-ppx").resource() == {"kind": "link", "name": "br-ppx"}
