#!/usr/bin/env python3
"""verify_shards.py DIR MANIFEST_SHA256: check a device's copy of block shards.

Exit 0 when DIR/manifest.json has the given sha256 and every block file listed in it has the
sha256 the manifest records; exit 1 (and say what differs) otherwise. Standard library only,
so it runs before paretopipe is importable.
"""

import hashlib
import json
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    folder, want = Path(sys.argv[1]), sys.argv[2]
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        print(f"{manifest}: missing")
        return 1
    if sha256(manifest) != want:
        print(f"{manifest}: differs from the controller's")
        return 1
    bad = []
    for block in json.loads(manifest.read_text())["blocks"]:
        path = folder / block["file"]
        if not path.is_file():
            bad.append(f"{block['file']}: missing")
        elif sha256(path) != block["sha256"]:
            bad.append(f"{block['file']}: sha256 differs")
    print("\n".join(bad) if bad else f"{folder}: all files match")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
