"""The torch pin is written once, in requirements/torch.txt: scripts/setup.sh and the python_env
and gpu_env roles read it, and nothing else in the tree pins torch or torchvision."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIN_FILE = REPO / "requirements" / "torch.txt"
PINNED = re.compile(r"\btorch(vision)?\s*===?\s*\d")


def _pin() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in PIN_FILE.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def test_the_pin_file_pins_torch_and_torchvision_exactly() -> None:
    pin = _pin()
    assert [p.split("==")[0] for p in pin] == ["torch", "torchvision"]
    assert all(re.fullmatch(r"[a-z]+==\d+(\.\d+)+", p) for p in pin), pin


def test_nothing_else_in_the_tree_pins_torch() -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tree's files are git's list")
    offenders = []
    for name in filter(None, listed):
        path = REPO / name
        if path in (PIN_FILE, Path(__file__).resolve()) or not path.is_file():  # the pin; this test's own
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if PINNED.search(line)]
    assert offenders == [], f"torch pinned outside requirements/torch.txt: {offenders}"


def _setup_pin(env: dict[str, str]) -> str:
    """The TORCH_PIN line of scripts/setup.sh, evaluated as setup.sh evaluates it."""
    line = next(x for x in (REPO / "scripts" / "setup.sh").read_text().splitlines() if x.startswith("TORCH_PIN="))
    out = subprocess.run(["bash", "-c", f'ROOT="$1"; {line}; printf %s "$TORCH_PIN"', "bash", str(REPO)],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout


def test_setup_reads_the_pin_file_and_honours_the_override() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PARETOPIPE_TORCH_PIN"}
    assert _setup_pin(env) == " ".join(_pin())
    assert _setup_pin({**env, "PARETOPIPE_TORCH_PIN": "torch==9.9 torchvision==9.9"}) == "torch==9.9 torchvision==9.9"


def test_both_roles_read_the_pin_file(tmp_path: Path) -> None:
    """Each role's default, templated by Ansible itself (role_path set as a role's would be)."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    if not playbook.exists():
        pytest.skip("ansible-playbook is not installed in this environment")
    roles = REPO / "roles"
    plays = []
    for role in ("python_env", "gpu_env"):
        plays.append({
            "name": f"Read {role}'s torch pin", "hosts": "localhost", "connection": "local", "gather_facts": False,
            "vars": {"role_path": str(roles / role)}, "vars_files": [str(roles / role / "defaults" / "main.yml")],
            "tasks": [{"name": "Show it", "ansible.builtin.debug": {"msg": f"PIN {role} {{{{ {role}_torch_packages | to_json }}}}"}}],
        })
    (tmp_path / "pin.yml").write_text(json.dumps(plays))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    out = subprocess.run([str(playbook), "-i", "localhost,", str(tmp_path / "pin.yml")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = dict(re.findall(r"PIN (\w+) (\[[^\]]*\])", out.stdout))  # the JSON list, as YAML or JSON quotes it
    assert {role: json.loads(v.replace('\\"', '"')) for role, v in seen.items()} == {
        "python_env": _pin(), "gpu_env": _pin()}
