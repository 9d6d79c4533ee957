"""Virtual devices (`paretopipe testbed up --kind vm`): boot time, network fidelity, compute.

    sudo .venv/bin/python benchmarks/bench_vm.py                     # up, measure, down
    sudo .venv/bin/python benchmarks/bench_vm.py --state-dir DIR     # a VM testbed already up
    sudo .venv/bin/python benchmarks/bench_vm.py --torch [--no-network]  # + provisioning, torch

Network: for every named condition (paretopipe/data/conditions.yml) it applies the netem role's
real-device shaping (paretopipe.netcond's tc commands: htb + netem + tbf on each device's NIC,
towards the other device), then measures from pi1 to pi2 with ping (RTT, 20 probes) and iperf3
(TCP, 8 s), and prints configured against achieved with the issue's tolerance (RTT within
2 ms + 10 % of 2 x delay, rate within 10 %). One extra row shows the queue-limit effect: the
same condition with netem's default limit of 1000 packets.

--torch (boots its own testbed): boot time, provisioning time and compute inside a guest
against the same on this host. The devices get one read-only disk holding the wheelhouse of
python_env's packages (built by playbooks/wheelhouse.yml) and, under site/, this venv's torch
and torchvision with what they import (hard links to this venv's files; PyPI's torch is a CUDA
build and needs the nvidia libraries even on a CPU), so torch runs inside the guest without a
3 GB install over ssh. Then:
  - provisioning: playbooks/provision.yml (python_env's real-device branch from the wheelhouse,
    without torch; the shards of MobileNetV2 at 32 px pushed as one archive), timed, with the
    shards tasks' own time;
  - `import torch` and a MobileNetV2 forward pass at 32 px, batch 2, one thread, inside pi1
    (the venv's Python, torch from site/) and on this host;
  - one real pipeline stage: `paretopipe stage serve --shards` inside pi1 (split 0: the whole
    model on pi1), `paretopipe run` from this host, against the same stage served on this host;
    per-batch compute of the stage and latency, with the ratio.
--no-network leaves out the conditions table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from paretopipe import netcond, testbed
from paretopipe.orchestrate import PlaybookRun, run_playbook
from paretopipe.testbed import _ssh
from paretopipe.testbed._state import Paths
from paretopipe.testbed.vm import up

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GUEST_SITE = "/srv/wheelhouse/site"
GUEST_PYTHON = "/root/paretopipe/venv/bin/python"  # the venv provisioning builds
SHARDS = "mobilenet_v2-c10-s0-32px"  # provision.yml's shards for model=mobilenet_v2, 32 px
PORT = 29517
TOPOLOGY = """\
prefix: vb17-
bridge: br-vb17
subnet: 10.118.17.0/24
controller_ip: 10.118.17.1
nic: eth0
mtu: 1500
devices:
  - {name: pi1, group: edge, profile: rpi5, ip: 10.118.17.11}
  - {name: pi2, group: edge, profile: rpi5, ip: 10.118.17.12}
"""
FORWARD = """
import json, time
t = time.perf_counter()
import torch, torchvision
imported = time.perf_counter() - t
torch.set_num_threads(1)
m = torchvision.models.mobilenet_v2(num_classes=10).eval()
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    m(x)
    t = time.perf_counter()
    for _ in range(5):
        m(x)
print(json.dumps({"import_s": imported, "forward_ms": (time.perf_counter() - t) / 5 * 1e3}))
"""


def ssh(paths: Paths, ip: str, command: str, timeout: float = 300) -> str:
    proc = subprocess.run(_ssh.ssh_argv(paths, ip, command), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench_vm: `{command}` on {ip} failed: {proc.stderr.strip()}")
    return proc.stdout


def shape(paths: Paths, ips: dict[str, str], cond: netcond.Condition | None,
          default_limit: bool = False) -> None:
    for name, ip in ips.items():
        peers = [p for n, p in ips.items() if n != name]
        cmds = netcond.clear_commands("eth0")
        script = "; ".join(shlex.join(c) + " 2>/dev/null" for c in cmds) + "; true"
        if cond is not None:
            add = netcond.egress_commands("eth0", peers, cond)
            if default_limit:
                for cmd in add:
                    if "netem" in cmd and "limit" in cmd:
                        i = cmd.index("limit")
                        del cmd[i:i + 2]
            script += "; " + " && ".join(shlex.join(c) for c in add)
        ssh(paths, ip, script)


def measure(paths: Paths, ips: dict[str, str], seconds: int) -> dict:
    src, dst = ips["pi1"], ips["pi2"]
    ping = ssh(paths, src, f"ping -n -q -c 20 -i 0.2 {dst}")
    stats = netcond.parse_ping(ping)
    ssh(paths, dst, "pkill -x iperf3; iperf3 -s -D -1 -B " + dst)
    time.sleep(1.0)
    out = json.loads(ssh(paths, src, f"iperf3 -J -t {seconds} -c {dst}", timeout=seconds + 120))
    rate = out["end"]["sum_received"]["bits_per_second"] / 1e6
    return {"rtt_ms": stats.get("rtt_median_ms") or stats.get("rtt_avg_ms"),
            "loss_pct": stats.get("loss_pct"), "rate_mbit": round(rate, 2)}


def network(paths: Paths, ips: dict[str, str], seconds: int) -> None:
    rows = [("none", None, False)]
    rows += [(name, cond, False) for name, cond in netcond.load_conditions().items()
             if not cond.is_trace]  # traces: benchmarks/bench_trace_steps.py
    rows.append(("wan, netem limit 1000", netcond.load_conditions()["wan"], True))
    print(f"{'condition':24} {'rtt cfg':>8} {'rtt got':>8} {'rate cfg':>9} {'rate got':>9} "
          f"{'ping loss':>9}  verdict")
    try:
        for label, cond, default_limit in rows:
            shape(paths, ips, cond, default_limit)
            got = measure(paths, ips, seconds)
            rtt_cfg = 2 * cond.delay_ms if cond else 0.0
            rate_cfg = cond.rate_mbit if cond else None
            rtt_ok = got["rtt_ms"] is not None and abs(got["rtt_ms"] - rtt_cfg) <= 2 + 0.1 * rtt_cfg
            rate_ok = rate_cfg is None or abs(got["rate_mbit"] - rate_cfg) <= 0.1 * rate_cfg
            print(f"{label:24} {rtt_cfg:8.1f} {got['rtt_ms']:8.2f} "
                  f"{'-' if rate_cfg is None else f'{rate_cfg:g}':>9} {got['rate_mbit']:9.2f} "
                  f"{got['loss_pct']:8.1f}%  "
                  f"{'ok' if rtt_ok and rate_ok else 'OUT'} (rtt {'ok' if rtt_ok else 'out'}, "
                  f"rate {'ok' if rate_ok else 'out'})", flush=True)
    finally:
        shape(paths, ips, None)


def _requirements(name: str, extras: frozenset[str]) -> list[tuple[str, frozenset[str]]]:
    out = []
    for text in metadata.distribution(name).requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.append((req.name, frozenset(req.extras)))
    return out


def _link(src: str, dst: str) -> None:
    """A hard link, or a copy where none can be made (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def torch_site(dest: Path) -> int:
    """Hard-link this venv's torch, torchvision and everything they require into ``dest``
    (copies where a link cannot be made); returns the bytes it holds. triton is left out:
    torch imports it only to compile (torch.compile), and it is 0.9 GB."""
    site = Path(metadata.distribution("torch").locate_file(""))
    todo, seen, tops = [("torch", frozenset()), ("torchvision", frozenset())], set(), set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen or key[0] == "triton":
            continue
        seen.add(key)
        todo += _requirements(name, extras)
        tops |= {f.parts[0] for f in metadata.distribution(name).files or []
                 if f.parts[0] != ".."}
    for top in sorted(tops):
        src = site / top
        if src.is_dir():
            shutil.copytree(src, dest / top, copy_function=_link, dirs_exist_ok=True)
        elif src.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            _link(str(src), str(dest / top))
    return sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


def device_disk(folder: Path) -> None:
    """The devices' read-only disk: python_env's wheelhouse at the top, torch under site/."""
    light = yaml.safe_load((REPO / "roles" / "python_env" / "defaults" / "main.yml").read_text())[
        "python_env_packages"]
    t0 = time.monotonic()
    build = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "playbooks/wheelhouse.yml",
         "-e", json.dumps({"wheelhouse_requirements": light,
                           "wheelhouse_dir": str(folder.parent / "wheelhouse")})],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                 PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"))
    if build.returncode != 0:
        raise SystemExit("bench_vm: playbooks/wheelhouse.yml failed:\n" + build.stdout[-3000:])
    (wheels,) = [p for p in (folder.parent / "wheelhouse").iterdir()
                 if p.is_dir() and not p.name.endswith(".partial")]
    folder.mkdir()
    for whl in wheels.iterdir():
        if whl.is_file():
            _link(str(whl), str(folder / whl.name))
    size = torch_site(folder / "site")
    print(f"device disk: wheelhouse of {len(list(folder.glob('*.whl')))} wheels, torch site "
          f"{size / 1e9:.2f} GB (hard links), made in {time.monotonic() - t0:.0f} s", flush=True)


def provision(tmp: Path, inventory: Path) -> None:
    extra = {"provision_hosts": "edge", "python_env_torch_packages": [],
             "python_env_wheelhouse": True, "model": "mobilenet_v2", "input_size": 32}
    t0 = time.monotonic()
    run = run_playbook("provision.yml", inventory=inventory, extra_vars=extra, timeout=3600,
                       artifacts_dir=tmp / "ansible")
    wall = time.monotonic() - t0
    if not run.ok:
        raise SystemExit(f"bench_vm: provision.yml {run.status} (rc {run.rc}); failed: "
                         f"{run.failed_tasks()}; see {run.artifacts}/stdout")
    role_s = _role_spans(run, "shards")
    on_device = sum(sec for task, sec in role_s.items() if task in PUSH_TASKS)
    slowest = sorted(run.task_spans(), reverse=True)[:3]
    print(f"provisioning (provision.yml, both devices, from a bare OS): {wall:.0f} s; changed: "
          + ", ".join(f"{h} {s.changed}" for h, s in run.hosts.items())
          + f"; the shards role {sum(role_s.values()):.0f} s, of which its push to the devices "
          f"(verify, unpack, verify) {on_device:.0f} s; slowest tasks: "
          + "; ".join(f"{task} {sec:.0f} s" for sec, task in slowest), flush=True)


# The shards role's tasks that reach the devices (tasks/push.yml).
PUSH_TASKS = ("Verify the device's shards against the controller's manifest",
              "Make the device's shard folder", "Unpack the shard archive on the device (one transfer)",
              "Verify the pushed shards")


def _role_spans(run: PlaybookRun, role: str) -> dict[str, float]:
    """Seconds per task of ``role``: from its start to the next task's (or play's) start."""
    marks = [(_dt.datetime.fromisoformat(e["created"]), e["event_data"].get("role"),
              e["event_data"].get("task", ""))
             for e in run.events if e.get("event") in ("playbook_on_task_start",
                                                       "playbook_on_play_start",
                                                       "playbook_on_stats")]
    out: dict[str, float] = {}
    for (start, task_role, task), (end, _, _) in zip(marks, marks[1:]):
        if task_role == role:
            out[task] = out.get(task, 0.0) + (end - start).total_seconds()
    return out


def torch_compute(paths: Paths, ip: str) -> None:
    t0 = time.monotonic()
    out = ssh(paths, ip, f"cd /tmp && PYTHONPATH={GUEST_SITE} {GUEST_PYTHON} -c "
                         + shlex.quote(FORWARD), timeout=1800)
    guest = json.loads(out.strip().splitlines()[-1])
    host = json.loads(subprocess.run([sys.executable, "-c", FORWARD], capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1])
    print(f"torch inside the VM: import {guest['import_s']:.1f} s (host {host['import_s']:.1f} s;"
          f" {guest['import_s'] / host['import_s']:.0f}x); MobileNetV2 32 px batch 2 forward "
          f"{guest['forward_ms']:.1f} ms (host {host['forward_ms']:.1f} ms; "
          f"{guest['forward_ms'] / host['forward_ms']:.1f}x); guest step "
          f"{time.monotonic() - t0:.0f} s", flush=True)


def _run_stage(tmp: Path, label: str, worker: str) -> dict:
    """`paretopipe run` from this host against one worker serving split 0 (the whole model)."""
    out = tmp / f"run-{label}.json"
    argv = [str(BIN / "paretopipe"), "run", "--model", "mobilenet_v2", "--input-size", "32",
            "--split", "0", "--stages", worker, "--batch-size", "2", "--warmup", "1",
            "--batches", "8", "--min-batches", "2", "--threads", "1", "--fidelity-batches", "0",
            "--connect-timeout", "900", "--timeout", "600", "--run-id", f"bench-vm-{label}",
            "--out", str(out)]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"bench_vm: the run against {label} failed: "
                         f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
    summary = json.loads(out.read_text())["summary"]
    return {"compute_ms": summary["compute_s"][-1] * 1e3,
            "latency_ms": summary["latency_s"]["mean"] * 1e3, "wall_s": time.monotonic() - t0}


def stage_compute(paths: Paths, ip: str, tmp: Path) -> None:
    """One pipeline stage inside pi1 against the same stage on this host."""
    serve = (f"-m paretopipe stage serve --threads 1 --shards /root/paretopipe/shards/{SHARDS}")
    # `cd; cmd &` rather than `cd && cmd &`: the latter backgrounds a subshell that keeps ssh's
    # channel open until the worker ends.
    ssh(paths, ip, f"cd /tmp; PYTHONPATH={GUEST_SITE} nohup {GUEST_PYTHON} {serve} --listen "
                   f"{ip}:{PORT} > /tmp/bench-worker.log 2>&1 < /dev/null & echo $! > "
                   "/tmp/bench-worker.pid")
    try:
        vm_stage = _run_stage(tmp, "vm", f"{ip}:{PORT}")
    finally:
        ssh(paths, ip, "kill $(cat /tmp/bench-worker.pid) 2>/dev/null; true")
    host_worker = subprocess.Popen(
        [str(BIN / "paretopipe"), "stage", "serve", "--threads", "1", "--shards",
         str(REPO / "build" / "shards" / SHARDS), "--listen", f"127.0.0.1:{PORT}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        host_stage = _run_stage(tmp, "host", f"127.0.0.1:{PORT}")
    finally:
        host_worker.terminate()
        host_worker.wait(timeout=30)
    blocks = json.loads((REPO / "build" / "shards" / SHARDS / "manifest.json").read_text())[
        "num_blocks"]
    print(f"one stage (MobileNetV2 32 px, split 0: all {blocks} blocks on the worker; batch 2, one "
          f"thread, tcp): inside pi1 compute {vm_stage['compute_ms']:.1f} ms/batch, latency "
          f"{vm_stage['latency_ms']:.1f} ms (run incl. worker start {vm_stage['wall_s']:.0f} s);"
          f" on this host compute {host_stage['compute_ms']:.1f} ms, latency "
          f"{host_stage['latency_ms']:.1f} ms; ratio compute "
          f"{vm_stage['compute_ms'] / host_stage['compute_ms']:.1f}x, latency "
          f"{vm_stage['latency_ms'] / host_stage['latency_ms']:.1f}x", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", help="a VM testbed already up (devices pi1, pi2)")
    parser.add_argument("--seconds", type=int, default=8, help="iperf3 length per condition")
    parser.add_argument("--torch", action="store_true",
                        help="also provision and time torch and one stage inside pi1")
    parser.add_argument("--no-network", action="store_true", help="leave out the conditions")
    args = parser.parse_args()
    if args.torch and args.state_dir:
        parser.error("--torch boots its own testbed (its devices need the torch disk); "
                     "leave out --state-dir")
    own = args.state_dir is None
    tmp = Path(tempfile.mkdtemp(prefix="bench-vm-"))
    state = Path(args.state_dir) if args.state_dir else tmp / "state"
    inventory = tmp / "inventory" / "hosts.yml"
    try:
        if own:
            (tmp / "topology.yml").write_text(TOPOLOGY)
            inventory.parent.mkdir()
            # The real-device settings of inventory/examples, as tests/testbed/test_vm.py has them.
            (inventory.parent / "group_vars").symlink_to(REPO / "inventory" / "examples"
                                                         / "group_vars")
            disk = None
            if args.torch:
                disk = tmp / "disk"
                device_disk(disk)
            t0 = time.monotonic()
            res = up(tmp / "topology.yml", state_dir=state, inventory=inventory,
                     wheelhouse=disk, progress=lambda m: None)
            print(f"image: {'built in %.0f s' % res['image_build_s'] if res['image_build_s'] else 'cached'}"
                  f"; up (two VMs, concurrently{', with the device disk made' if disk else ''}): "
                  f"{time.monotonic() - t0:.0f} s; boot to ssh: "
                  + ", ".join(f"{n} {s} s" for n, s in res["boot_s"].items()), flush=True)
        st = testbed.status(state_dir=state)
        ips = {n: d["ip"] for n, d in st["devices"].items()}
        paths = Paths.at(state)
        kernel = ssh(paths, ips["pi1"], "uname -r").strip()
        print(f"guest kernel {kernel}; netem module: "
              + ssh(paths, ips["pi1"], "modprobe sch_netem && echo loaded").strip(), flush=True)
        if args.torch:
            provision(tmp, inventory)
        if not args.no_network:
            network(paths, ips, args.seconds)
        if args.torch:
            torch_compute(paths, ips["pi1"])
            stage_compute(paths, ips["pi1"], tmp)
    finally:
        if own:
            testbed.down(state_dir=state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
