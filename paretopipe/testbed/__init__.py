"""The embedded default: an emulated edge testbed on one Linux machine.

Each device is a network namespace on a bridge, with its own sshd (so Ansible reaches it as it
reaches a real device), working directory and cgroup CPU/memory limits from a device profile.
An emulated Raspberry Pi is a CPU-limited slice of this machine, not a Raspberry Pi.

Public API (all need root except :func:`load_conditions`, :func:`load_topology` and
:func:`load_profiles`)::

    up(topology=None, *, state_dir=None, inventory=None, progress=None) -> dict
    down(*, state_dir=None, topology=None, progress=None) -> dict
    leftovers(topology, state=None) -> list[Leftover]   # what still exists, by listing
    status(*, state_dir=None) -> dict
    shape(condition, between=None, *, conditions_file=None, state_dir=None) -> dict
    unshape(*, state_dir=None) -> dict
    check(pair=None, *, state_dir=None, duration_s=None) -> dict
    check_trace(condition, pair=None, *, state_dir=None, duration_s=None, bin_s=0.5) -> dict
    load_conditions(path=None) -> dict[str, Condition]

See docs/testbed.md.
"""

from paretopipe.netcond.conditions import Condition, load_conditions
from paretopipe.testbed._lifecycle import Leftover, down, leftovers, up
from paretopipe.testbed._replay import check_trace
from paretopipe.testbed._shaping import check, shape, transfer, unshape
from paretopipe.testbed._state import default_inventory_path, default_state_dir
from paretopipe.testbed._status import status
from paretopipe.testbed.topology import Device, Profile, Topology, load_profiles, load_topology

__all__ = [
    "Condition",
    "Device",
    "Leftover",
    "Profile",
    "Topology",
    "check",
    "check_trace",
    "default_inventory_path",
    "default_state_dir",
    "down",
    "leftovers",
    "load_conditions",
    "load_profiles",
    "load_topology",
    "shape",
    "status",
    "transfer",
    "unshape",
    "up",
]
