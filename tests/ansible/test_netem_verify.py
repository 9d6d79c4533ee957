"""The netem role's real-device verdict: each hop judged by the package's tolerance rule, and
``netem_verify_strict`` failing the play on a hop that misses its target.

The role's own task files run (device_judge.yml, device_record.yml, verify.yml) on two local
hosts, with the measurements a chain would have registered given as facts: the judgement is
the part under test, not the shaping (which needs devices with sch_netem)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.ansible.conftest import REPO, ansible_env, tool

pytestmark = pytest.mark.slow  # each test runs ansible-playbook (the netem role's tasks on two local hosts)

#: The condition as `python -m paretopipe.netcond apply` prints it: 20 ms each way, 20 Mbit/s.
APPLIED = {"applied": {"name": "c20", "delay_ms": 20.0, "jitter_ms": 0.0, "loss_pct": 0.0, "rate_mbit": 20.0}}


def _play(tmp_path: Path, *, rtt_ms: float, rate_mbit: float, strict: bool) -> subprocess.CompletedProcess:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(textwrap.dedent(f"""\
        all:
          hosts:
            pa: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}, paretopipe_ip: 127.0.0.1}}
            pb: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}, paretopipe_ip: 127.0.0.1}}
        """))
    sent = {"rtt_ms": rtt_ms, "loss_pct": 0.0}
    got = {"rate_mbit": rate_mbit}
    playbook = tmp_path / "verify.yml"
    playbook.write_text(textwrap.dedent(f"""\
        - name: Judge a measured chain pa -> pb
          hosts: pa,pb
          gather_facts: false
          vars:
            netem_chain: [pa, pb]
            netem_condition: c20
            netem_no_netem: false
            netem_verify_strict: {str(strict).lower()}
            netem_device_python: {sys.executable}
          tasks:
            - name: What the apply and measure steps registered
              ansible.builtin.set_fact:
                netem_applied: {{stdout: '{json.dumps(APPLIED)}'}}
                netem_sent: {{stdout: '{json.dumps(sent)}'}}
                netem_received: {{stdout_lines: ['{json.dumps(got)}']}}
            - name: Judge
              ansible.builtin.include_role:
                name: netem
                tasks_from: device_judge.yml
              when: inventory_hostname == 'pa'
            - name: Record
              ansible.builtin.include_role:
                name: netem
                tasks_from: device_record.yml
            - name: Verify
              ansible.builtin.include_role:
                name: netem
                tasks_from: verify.yml
            - name: Keep the record
              ansible.builtin.copy:
                content: "{{{{ netem_record | to_json }}}}"
                dest: {tmp_path / "record.json"}
                mode: "0644"
              run_once: true
        """))
    env = ansible_env()
    env["ANSIBLE_ROLES_PATH"] = str(REPO / "roles")
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([tool("ansible-playbook"), "-i", str(inventory), str(playbook)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path, check=False)


def _record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "record.json").read_text())


def test_strict_verify_fails_on_a_hop_out_of_tolerance(tmp_path: Path) -> None:
    # 20 ms each way: 40 ms expected, bound 2 ms + 4 ms. 55 ms misses; the rate is right.
    proc = _play(tmp_path, rtt_ms=55.0, rate_mbit=19.5, strict=True)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "c20 was not achieved within tolerance" in proc.stdout, proc.stdout[-3000:]


def test_lenient_verify_records_the_miss_and_goes_on(tmp_path: Path) -> None:
    proc = _play(tmp_path, rtt_ms=41.0, rate_mbit=12.0, strict=False)  # rate 40% short
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    record = _record(tmp_path)
    assert record["extra"]["ok"] is False
    hop = record["extra"]["hops"][0]
    assert hop["checks"]["rtt"]["ok"] is True and hop["checks"]["rate"]["ok"] is False
    assert hop["measured"] == {"rtt_ms": 41.0, "rate_mbit": 12.0, "ping_loss_pct": 0.0}


@pytest.mark.parametrize("rtt_ms, rate_mbit", [(40.0, 20.0), (45.9, 18.1)])
def test_strict_verify_passes_within_tolerance(tmp_path: Path, rtt_ms: float, rate_mbit: float) -> None:
    proc = _play(tmp_path, rtt_ms=rtt_ms, rate_mbit=rate_mbit, strict=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert _record(tmp_path)["extra"]["ok"] is True
