"""Where the testbed keeps its files, the state file that records what it made, and the
progress callback every step of ``up``, ``down`` and ``shape`` reports to."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from paretoio.files import write_atomic
from paretopipe.errors import TestbedError

STATE_ENV = "PARETOPIPE_TESTBED_DIR"
SCHEMA = 1

#: Told one line per thing done ("created namespace pp-pi1"); the CLI prints them.
Progress = Callable[[str], None]


def quiet(_msg: str) -> None:
    """The progress callback that says nothing (the default)."""


def checkout_root() -> Path | None:
    """The source checkout the package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "paretopipe").is_dir() else None


def default_state_dir() -> Path:
    """``$PARETOPIPE_TESTBED_DIR``, else ``<checkout>/.state/testbed``, else
    ``/var/lib/paretopipe/testbed`` (an installed, non-editable package)."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env).resolve()
    root = checkout_root()
    return root / ".state" / "testbed" if root else Path("/var/lib/paretopipe/testbed")


def default_inventory_path() -> Path:
    root = checkout_root()
    return (root if root else Path.cwd()) / "inventory" / "emulated" / "hosts.yml"


def device_python() -> str:
    """The interpreter devices run: this venv's python (namespaces share the file system)."""
    if sys.prefix != sys.base_prefix:
        return str(Path(sys.prefix) / "bin" / "python")
    return sys.executable


@dataclass
class Paths:
    root: Path

    @classmethod
    def at(cls, state_dir: str | Path | None) -> Paths:
        return cls(Path(state_dir).resolve() if state_dir is not None else default_state_dir())

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def ssh(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.ssh / "known_hosts"

    def host_key(self, device: str) -> Path:
        return self.ssh / f"host_{device}_ed25519"

    def workdir(self, device: str) -> Path:
        return self.root / "devices" / device

    def rundir(self, device: str) -> Path:
        return self.root / "run" / device


@dataclass
class State:
    """What exists: the topology it was built from, every resource made (in order), shaping."""

    topology: dict
    inventory: str
    resources: list[dict] = field(default_factory=list)
    shaping: dict | None = None
    cgroup_version: str | None = None
    device_kind: str = "netns"  # "netns" (namespaces) or "vm" (paretopipe.testbed.vm)

    @classmethod
    def load(cls, paths: Paths) -> State | None:
        try:
            data = json.loads(paths.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise TestbedError(
                f"state file {paths.state_file} is unreadable ({exc}); remove it after checking "
                "`ip netns list` for leftovers"
            ) from exc
        if data.get("schema") != SCHEMA:
            raise TestbedError(f"state file {paths.state_file} has schema {data.get('schema')}, "
                               f"expected {SCHEMA}")
        return cls(topology=data["topology"], inventory=data["inventory"],
                   resources=data.get("resources", []), shaping=data.get("shaping"),
                   cgroup_version=data.get("cgroup_version"),
                   device_kind=data.get("device_kind", "netns"))

    def save(self, paths: Paths) -> None:
        write_atomic(paths.state_file, json.dumps({
            "schema": SCHEMA, "topology": self.topology, "inventory": self.inventory,
            "cgroup_version": self.cgroup_version, "resources": self.resources,
            "shaping": self.shaping, "device_kind": self.device_kind,
        }, indent=1))

    def has(self, kind: str, **match: object) -> bool:
        return any(r["kind"] == kind and all(r.get(k) == v for k, v in match.items())
                   for r in self.resources)

    def find(self, kind: str, **match: object) -> list[dict]:
        return [r for r in self.resources
                if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """One testbed command at a time per state directory."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TestbedError(
                f"another testbed command holds {paths.root / 'lock'}; wait for it to finish"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
