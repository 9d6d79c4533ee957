"""The Ansible code is lint-clean (production profile, no rule skipped) and every playbook parses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import REPO, ansible_env, tool

PLAYBOOKS = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))


def test_lint_config_skips_nothing() -> None:
    cfg = yaml.safe_load((REPO / ".ansible-lint").read_text())
    assert cfg["profile"] == "production"
    for key in ("skip_list", "warn_list", "enable_list_skip", "mock_roles"):
        assert not cfg.get(key), f".ansible-lint sets {key}"
    offenders = [str(p.relative_to(REPO)) for d in ("roles", "playbooks", "inventory")
                 for p in (REPO / d).rglob("*.yml") if "noqa" in p.read_text()]
    assert offenders == [], "inline noqa skips a rule"


@pytest.mark.slow  # ansible-lint over every role and playbook
def test_ansible_lint_production_profile_passes() -> None:
    proc = subprocess.run([tool("ansible-lint"), "--profile", "production", "--nocolor"], cwd=REPO,
                          env=ansible_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(playbook: str) -> None:
    proc = subprocess.run([tool("ansible-playbook"), "--syntax-check", f"playbooks/{playbook}"], cwd=REPO,
                          env=ansible_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_documents_and_declares_its_variables() -> None:
    for role in sorted(p for p in (REPO / "roles").iterdir() if p.is_dir()):
        assert (role / "README.md").is_file(), f"{role.name} has no README"
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        declared = set().union(*(set(s.get("options", {})) for s in specs.values()))
        for name in defaults:
            assert name.startswith(f"{role.name}_"), f"{role.name}: default {name} lacks the role prefix"
            assert name in declared, f"{role.name}: default {name} is not in meta/argument_specs.yml"


def test_one_place_for_sweep_defaults() -> None:
    """Every extra var the issue names has its default in playbooks/group_vars/all/sweep.yml."""
    defaults = yaml.safe_load((REPO / "playbooks" / "group_vars" / "all" / "sweep.yml").read_text())
    for name in ("model", "splits", "conditions", "backends", "repeats", "batch_sizes", "windows", "repeats_target",
                 "input_size", "batches", "duration", "results_dir", "sweep_id"):
        assert name in defaults, name
    assert Path(REPO / "ansible.cfg").read_text().count("inventory = inventory/emulated") == 1
