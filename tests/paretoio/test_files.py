"""The atomic writer: whole files or none, exclusive names never overwritten, no temporary left."""

from __future__ import annotations

import json

import pytest

from paretoio.files import write_atomic, write_json_atomic


def test_replaces_a_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"  # the folder is made
    write_atomic(path, "one")
    write_atomic(path, b"two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_exclusive_never_overwrites(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1}, exclusive=True)
    with pytest.raises(FileExistsError):
        write_json_atomic(path, {"a": 2}, exclusive=True)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_json_refuses_nan_and_writes_nothing(tmp_path):
    path = tmp_path / "n.json"
    with pytest.raises(ValueError):
        write_json_atomic(path, {"x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.txt"
    write_atomic(path, "old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("paretoio.files.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
