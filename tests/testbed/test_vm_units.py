"""Virtual devices, the parts that need no VM: argument errors, the image's cache key, MACs."""

from __future__ import annotations

from paretopipe.testbed.topology import load_topology
from paretopipe.testbed.vm import _image, _machines
from tests.conftest import run_cli


def test_vm_options_without_kind_vm_are_one_line_errors(tmp_path):
    out = run_cli("testbed", "up", "--wheelhouse", str(tmp_path), "--state-dir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == ("paretopipe: error: --wheelhouse, --image-cache and "
                                  "--boot-timeout are for --kind vm")


def test_a_missing_wheelhouse_is_one_line_error(tmp_path):
    out = run_cli("testbed", "up", "--kind", "vm", "--wheelhouse", str(tmp_path / "none"),
                  "--state-dir", str(tmp_path / "state"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paretopipe: error: ")
    # As root it is the missing folder; otherwise the missing privilege. Nothing was made.
    assert "no such folder" in lines[0] or "root" in lines[0]
    assert not (tmp_path / "state" / "state.json").exists()


def test_the_image_key_follows_what_goes_into_the_image(monkeypatch):
    key = _image.image_key()
    assert key.startswith("bookworm-") and key == _image.image_key()
    monkeypatch.setattr(_image, "PACKAGES", (*_image.PACKAGES, "htop"))
    assert _image.image_key() != key


def test_macs_are_distinct_per_device_and_per_testbed():
    topo = load_topology()
    macs = {_machines._mac(topo, n) for n in topo.names}
    assert len(macs) == len(topo.names)
    assert all(m.startswith("52:54:") and len(m.split(":")) == 6 for m in macs)
