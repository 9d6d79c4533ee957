"""Fixtures for the Ansible tests: ansible-playbook against a private emulated testbed.

The testbed gets its own topology (names and subnet unique to the test session), state folder and
inventory folder under a temporary directory, so it never meets the default testbed or another
test's. The inventory folder shares the repository's inventory/emulated/group_vars, so the
playbooks see exactly what they see on the default inventory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks._testbed_common import GPU_SERVER, free_index, topology_text, two_pis
from paretopipe.orchestrate import PlaybookRun, run_playbook

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _topology() -> str:
    """A topology with names and a subnet of its own, so that concurrent test sessions (and other
    testbeds on this machine) never meet: interface names from this process's id, the first free
    one taken. Edge devices are rpi5 slices (a whole core each): the tests are about the
    playbooks, and Ansible's own tasks on a half-core device are slow."""
    idx = free_index("q", 0, 250)
    return topology_text(f"q{idx:02x}", f"10.{idx}.186", [*two_pis("rpi5"), GPU_SERVER])


def tool(name: str) -> str:
    """An executable of this environment (ansible-playbook, ansible-lint, ...)."""
    return str(BIN / name)


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class EmulatedTestbed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.topology = root / "topology.yml"
        self.state = root / "state"
        self.inventory = root / "inventory"
        self.results = root / "results"

    def playbook(self, playbook: str, *, check: bool = False, timeout: int = 400,
                 on_event: Callable[[dict], None] | None = None, **extra_vars: object) -> PlaybookRun:
        """``playbooks/<playbook>`` on this testbed through ansible-runner
        (:mod:`paretopipe.orchestrate`); artifacts (stdout, events) under ``root/runner``."""
        return run_playbook(playbook, inventory=self.inventory, timeout=timeout, on_event=on_event,
                            cmdline="--check" if check else None,
                            artifacts_dir=self.root / "runner",
                            extra_vars={"testbed_topology": str(self.topology),
                                        "testbed_state_dir": str(self.state),
                                        "results_dir": str(self.results), **extra_vars})

    def paretopipe(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "paretopipe", *args, "--state-dir", str(self.state)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    @property
    def subnet_prefix(self) -> str:
        """``10.N.186.`` of this testbed's devices."""
        import yaml

        return yaml.safe_load(self.topology.read_text())["subnet"].rsplit(".", 1)[0] + "."

    def workdir(self, device: str) -> Path:
        return self.state / "devices" / device


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedTestbed]:
    tb = EmulatedTestbed(tmp_path_factory.mktemp("ansible-testbed"))
    tb.topology.write_text(_topology())
    tb.inventory.mkdir()
    (tb.inventory / "group_vars").symlink_to(REPO / "inventory" / "emulated" / "group_vars")
    try:
        yield tb
    finally:
        # Whatever a test left running: workers (by PID, through the playbook), then the testbed.
        if (tb.inventory / "hosts.yml").exists():
            tb.playbook("teardown.yml", timeout=180)
        tb.paretopipe("testbed", "down", "--topology", str(tb.topology))


def stage_processes(testbed: EmulatedTestbed) -> list[str]:
    """Command lines of live processes that belong to this testbed's stage workers or runs."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(testbed.state) in cmdline and ("stagectl" in cmdline or "paretopipe.plan" in cmdline
                                               or "stage serve" in cmdline):
            found.append(f"{proc.name}: {cmdline}")
        elif "stage serve" in cmdline and testbed.subnet_prefix in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def shaped_devices(testbed: EmulatedTestbed) -> dict[str, object]:
    import json

    proc = testbed.paretopipe("testbed", "status", "--json")
    status = json.loads(proc.stdout)  # --json: stdout is JSON only
    qdiscs = {}
    for name, dev in status["devices"].items():
        out = subprocess.run(["ip", "netns", "exec", dev["netns"], "tc", "qdisc", "show"],
                             capture_output=True, text=True, check=True).stdout
        shaping = [line for line in out.splitlines() if any(k in line for k in ("tbf", "netem", "htb"))]
        if dev["shaped"] or shaping:
            qdiscs[name] = {"shaped": dev["shaped"], "qdiscs": shaping}
    return qdiscs
