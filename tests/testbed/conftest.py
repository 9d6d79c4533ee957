"""Fixtures for the emulated-testbed tests.

Root tests use their own prefixes and subnets (``ppt<xx>-``/10.<xx>.9.0/24 for the shared
session testbed, others per test, ``<xx>`` a tag no testbed on this machine uses yet), never the
default pp-/10.77.0.0/24, so they can run beside a testbed someone has up and beside another
test session. The session testbed comes up once and always goes down at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks._testbed_common import free_index, topology_text
from paretopipe import testbed as tb
from paretopipe.testbed.topology import Topology, load_topology


def netns_unavailable() -> str | None:
    """Why the root tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, iptables, cgroups)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is unavailable on this kernel"
    return None


def write_topology(path: Path, letters: str, third_octet: int, *,
                   devices: tuple[tuple[str, str, str], ...] = (
                       ("pi1", "edge", "rpi4"), ("pi2", "edge", "rpi4"),
                       ("gpu", "servers", "gpu-server"))) -> tuple[Path, str]:
    """A topology whose prefix is ``<letters><xx>`` with ``xx`` a free tag (100-199), on
    10.<xx>.<third_octet>.0/24, the devices at .11, .12, ... in order: the file and the prefix."""
    idx = free_index(letters, 100, 100)
    prefix = f"{letters}{idx:02x}"
    path.write_text(topology_text(prefix, f"10.{idx}.{third_octet}",
                                  [(name, group, profile, 11 + i) for i, (name, group, profile) in enumerate(devices)]))
    return path, prefix


@dataclass
class Bed:
    topology_file: Path
    topology: Topology
    state_dir: Path
    inventory: Path


@pytest.fixture(scope="session")
def testbed(tmp_path_factory) -> Bed:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("testbed")
    topo_file, _ = write_topology(root / "topology.yml", "ppt", 9)
    bed = Bed(topo_file, load_topology(topo_file), root / "state", root / "hosts.yml")
    tb.down(state_dir=bed.state_dir, topology=topo_file)  # leftovers of a killed earlier run
    try:
        tb.up(topo_file, state_dir=bed.state_dir, inventory=bed.inventory)
        yield bed
    finally:
        tb.down(state_dir=bed.state_dir, topology=topo_file)


@pytest.fixture
def unshaped(testbed):
    """The session testbed, unshaped before and after the test."""
    tb.unshape(state_dir=testbed.state_dir)
    yield testbed
    tb.unshape(state_dir=testbed.state_dir)
