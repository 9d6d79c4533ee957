"""`python -m paretopipe.netcond apply|clear|show` for real, on a veth in a scratch namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paretopipe.testbed import _system
from tests.testbed.conftest import netns_unavailable

pytestmark = pytest.mark.root
NS = f"ppn-scratch-{os.getpid()}"  # this session's own: concurrent sessions never meet


@pytest.fixture
def scratch():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        _system.run(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"], ns=NS)
        _system.run(["ip", "link", "set", "v0", "up"], ns=NS)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=True)


def netcond(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS, sys.executable, "-m", "paretopipe.netcond",
                           *args], capture_output=True, text=True, timeout=60)


def test_apply_show_reapply_clear(scratch):
    base = ["--dev", "v0", "--peers", "10.0.0.2,10.0.0.3", "--ingress-ifb", "ifb0"]
    out = netcond("apply", *base, "--rate", "10mbit", "--no-netem")
    assert out.returncode == 0, out.stderr
    shown = json.loads(netcond("show", "--dev", "v0").stdout)
    assert shown["configured"]["rate_mbit"] == 10.0
    assert [q["kind"] for q in shown["qdiscs"]][:2] == ["htb", "tbf"]
    # Applying again (another condition) starts from a clean NIC instead of failing.
    out = netcond("apply", *base, "--rate", "20mbit", "--no-netem")
    assert out.returncode == 0, out.stderr
    assert json.loads(netcond("show", "--dev", "v0").stdout)["configured"]["rate_mbit"] == 20.0
    assert netcond("clear", "--dev", "v0", "--ingress-ifb", "ifb0").returncode == 0
    kinds = {q["kind"] for q in json.loads(netcond("show", "--dev", "v0").stdout)["qdiscs"]}
    assert not kinds & {"htb", "tbf", "netem", "ingress"}, kinds
    assert "ifb0" not in _system.links(NS)


def test_a_failed_apply_leaves_the_nic_clean(scratch):
    has_netem = _system.run(["tc", "qdisc", "add", "dev", "v1", "root", "netem"], ns=NS,
                            check=False).returncode == 0
    if has_netem:
        pytest.skip("this kernel has sch_netem; the failure path needs one without")
    out = netcond("apply", "--dev", "v0", "--peers", "10.0.0.2", "--delay", "5ms",
                  "--rate", "10mbit")
    assert out.returncode == 2 and "no sch_netem" in out.stderr
    qdiscs = _system.run(["tc", "qdisc", "show", "dev", "v0"], ns=NS).stdout
    assert "htb" not in qdiscs and "tbf" not in qdiscs
