"""The virtual devices' disk image: built once from Debian's packages (mmdebstrap), then cached.

The cache key is a digest of everything that goes into the image (suite, mirror, packages, the
guest init), so changing any of them builds a new image next to the old one; an image is built
into a temporary folder and renamed into place, so a crash never leaves a half image in use.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import TestbedError
from paretopipe.testbed import _system

CACHE_ENV = "PARETOPIPE_VM_CACHE"
SUITE = "bookworm"
MIRROR = os.environ.get("PARETOPIPE_VM_MIRROR", "http://deb.debian.org/debian")
# A freshly flashed Debian / Raspberry Pi OS host: a kernel, sshd and Python; what
# python_env's real-device branch installs (python3-venv, python3-pip, libopenblas0) is there
# too because the devices are offline (air-gapped), as research testbeds often are. iperf3 and
# ping measure the links; iproute2 and kmod give tc and netem; python3-apt is what Ansible's apt
# module needs (Raspberry Pi OS ships it).
PACKAGES = ("linux-image-amd64", "mount", "openssh-server", "python3", "python3-apt", "python3-venv", "python3-pip",
            "libopenblas0", "iperf3", "iproute2", "iputils-ping", "procps", "kmod", "rsync",
            "sudo")
IMAGE_SIZE = "4G"  # sparse; the root file system grows into it as the venv is built
BUILD_TIMEOUT_S = 1800
GUEST_INIT = Path(__file__).with_name("guest-init.sh")
TOOLS = ("mmdebstrap", "mkfs.ext4", "qemu-system-x86_64", "qemu-img")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Image:
    root: Path          # the cache folder of this image
    rootfs: Path        # raw ext4 image (the overlays' backing file; never written)
    kernel: Path
    initrd: Path
    built: bool         # built by this call (False: taken from the cache)
    build_s: float | None


def default_cache_dir() -> Path:
    """``$PARETOPIPE_VM_CACHE``, else ``/var/cache/paretopipe/vm``."""
    return Path(os.environ.get(CACHE_ENV, "/var/cache/paretopipe/vm"))


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise TestbedError(f"virtual devices need {', '.join(missing)}; run scripts/setup.sh "
                           "(installs mmdebstrap, qemu-system-x86, qemu-utils, e2fsprogs)")


def image_key() -> str:
    h = hashlib.sha256()
    for part in (SUITE, MIRROR, *PACKAGES, IMAGE_SIZE, GUEST_INIT.read_text()):
        h.update(part.encode() + b"\0")
    return f"{SUITE}-{h.hexdigest()[:12]}"


def _found(root: Path) -> Image | None:
    rootfs, kernel, initrd = root / "rootfs.img", root / "vmlinuz", root / "initrd.img"
    if all(p.is_file() for p in (rootfs, kernel, initrd)):
        return Image(root, rootfs, kernel, initrd, built=False, build_s=None)
    return None


def ensure_image(cache_dir: str | Path | None = None, *,
                 progress: Progress | None = None) -> Image:
    """The cached image, built first if missing (a few minutes: needs the Debian mirror)."""
    require_tools()
    progress = progress or (lambda _m: None)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / image_key()
    if (img := _found(root)) is not None:
        return img
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build of the same image: wait for it
        if (img := _found(root)) is not None:
            return img
        return _build(root, progress)


def _build(root: Path, progress: Progress) -> Image:
    t0 = time.monotonic()
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    work.mkdir(parents=True)
    progress(f"building the device image {root.name} from {MIRROR} ({SUITE}; takes minutes)")
    proc = _system.run(["mmdebstrap", "--variant=apt", "--include=" + ",".join(PACKAGES),
                        SUITE, str(tree), MIRROR], check=False, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TestbedError(f"mmdebstrap failed (is {MIRROR} reachable?): {' | '.join(tail)}")
    boot = tree / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        shutil.rmtree(work, ignore_errors=True)
        raise TestbedError(f"the image has no kernel or initrd in {boot}")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    init = tree / "sbin" / "paretopipe-init"
    shutil.copy2(GUEST_INIT, init)
    init.chmod(0o755)
    (tree / "root" / "paretopipe").mkdir(exist_ok=True)
    _system.run(["mkfs.ext4", "-q", "-F", "-L", "pproot", "-d", str(tree),
                 str(work / "rootfs.img"), IMAGE_SIZE], timeout=600)
    shutil.rmtree(tree)
    os.replace(work, root)
    took = time.monotonic() - t0
    progress(f"built the device image in {took:.0f} s ({root})")
    return Image(root, root / "rootfs.img", root / "vmlinuz", root / "initrd.img", built=True,
                 build_s=took)


def ext4_image(path: Path, folder: Path | None, files: dict[str, tuple[bytes, int]],
               size: str) -> None:
    """A small ext4 image holding ``folder``'s tree, or ``files`` (name -> (content, mode))."""
    src = folder
    staging = None
    if folder is None:
        staging = path.with_name(path.name + ".d")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, (content, mode) in files.items():
            (staging / name).write_bytes(content)
            (staging / name).chmod(mode)
        src = staging
    try:
        _system.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(path), size], timeout=600)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
