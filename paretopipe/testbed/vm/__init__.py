"""Virtual devices with their own kernel: QEMU guests running Debian bookworm's stock kernel.

``paretopipe testbed up --kind vm`` makes each device of the topology a virtual machine: its own
kernel (``linux-image-amd64``), its own disk (a copy-on-write overlay of an image built once from
Debian's packages and cached), its own sshd and a virtio NIC on a tap on the testbed's bridge.
The device profile sets vCPUs (``cpus``), memory and the CPU cap (the QEMU process runs in the
device's cgroups, as the namespace testbed's sshd does). The inventory it writes uses the
real-device settings of ``inventory/examples``: Ansible provisions these devices from a bare OS.

Why QEMU's TCG and not User-Mode Linux or KVM: see docs/testbed.md ("Virtual devices").

Public API::

    up(topology=None, *, state_dir=None, inventory=None, cache_dir=None, wheelhouse=None,
       boot_timeout_s=BOOT_TIMEOUT_S, progress=None) -> dict
    ensure_image(cache_dir=None, *, progress=None) -> Image

``down`` and ``status`` are the namespace testbed's (:func:`paretopipe.testbed.down`): a VM's
resources (QEMU process, tap, overlay, seed disk, cgroups) are recorded in the same state file.
"""

from paretopipe.testbed.vm._image import Image, default_cache_dir, ensure_image
from paretopipe.testbed.vm._machines import BOOT_TIMEOUT_S, up

__all__ = ["BOOT_TIMEOUT_S", "Image", "default_cache_dir", "ensure_image", "up"]
