"""Virtual devices (`paretopipe testbed up --kind vm`): boot time, network fidelity, compute.

    sudo .venv/bin/python benchmarks/bench_vm.py                     # up, measure, down
    sudo .venv/bin/python benchmarks/bench_vm.py --state-dir DIR     # a VM testbed already up
    ... --torch                                                      # also time MobileNetV2

Network: for every named condition (paretopipe/data/conditions.yml) it applies the netem role's
real-device shaping (paretopipe.netcond's tc commands: htb + netem + tbf on each device's NIC,
towards the other device), then measures from pi1 to pi2 with ping (RTT, 20 probes) and iperf3
(TCP, 8 s), and prints configured against achieved with the issue's tolerance (RTT within
2 ms + 10 % of 2 x delay, rate within 10 %). One extra row shows the queue-limit effect: the
same condition with netem's default limit of 1000 packets.

--torch: the controller's site-packages (this venv: torch, torchvision) attached to pi1 as a
read-only disk, so torch runs inside the guest without a 3 GB install; times `import torch` and
a MobileNetV2 forward pass at 32 px, batch 2, inside the guest and on this host (one thread each).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paretopipe import netcond, testbed
from paretopipe.testbed import _ssh
from paretopipe.testbed._state import Paths
from paretopipe.testbed.vm import up

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
import time, torch, torchvision
torch.set_num_threads(1)
m = torchvision.models.mobilenet_v2(num_classes=10).eval()
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    m(x)
    t = time.perf_counter()
    for _ in range(5):
        m(x)
print(json.dumps({"forward_ms": (time.perf_counter() - t) / 5 * 1e3}))
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
    rows += [(name, cond, False) for name, cond in netcond.load_conditions().items()]
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


def torch_compute(paths: Paths, ip: str) -> None:
    t0 = time.monotonic()
    imp = ssh(paths, ip, "cd /tmp && PYTHONPATH=/srv/wheelhouse /usr/bin/python3 -c "
                         "'import time; t = time.perf_counter(); import torch, torchvision; "
                         "print(time.perf_counter() - t)'", timeout=1800)
    guest_import = float(imp.split()[-1])
    out = ssh(paths, ip, "cd /tmp && PYTHONPATH=/srv/wheelhouse /usr/bin/python3 -c "
                         + shlex.quote("import json\n" + FORWARD), timeout=1800)
    guest = json.loads(out.strip().splitlines()[-1])["forward_ms"]
    t = time.perf_counter()
    host_out = subprocess.run([sys.executable, "-c", "import json\n" + FORWARD],
                              capture_output=True, text=True, check=True).stdout
    host_import_and_run = time.perf_counter() - t
    host = json.loads(host_out.strip().splitlines()[-1])["forward_ms"]
    print(f"torch inside the VM: import {guest_import:.1f} s; MobileNetV2 32 px batch 2 forward "
          f"{guest:.1f} ms (host: {host:.1f} ms; ratio {guest / host:.1f}x); host process "
          f"import+run {host_import_and_run:.1f} s; whole guest step {time.monotonic() - t0:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", help="a VM testbed already up (devices pi1, pi2)")
    parser.add_argument("--seconds", type=int, default=8, help="iperf3 length per condition")
    parser.add_argument("--torch", action="store_true", help="also time torch inside pi1")
    args = parser.parse_args()
    own = args.state_dir is None
    tmp = Path(tempfile.mkdtemp(prefix="bench-vm-"))
    state = Path(args.state_dir) if args.state_dir else tmp / "state"
    try:
        if own:
            (tmp / "topology.yml").write_text(TOPOLOGY)
            site = Path(next(p for p in sys.path if p.endswith("site-packages")))
            t0 = time.monotonic()
            res = up(tmp / "topology.yml", state_dir=state, inventory=tmp / "hosts.yml",
                     wheelhouse=site if args.torch else None, progress=lambda m: None)
            print(f"image: {'built in %.0f s' % res['image_build_s'] if res['image_build_s'] else 'cached'}"
                  f"; up (two VMs, concurrently): {time.monotonic() - t0:.0f} s; boot to ssh: "
                  + ", ".join(f"{n} {s} s" for n, s in res["boot_s"].items()), flush=True)
        st = testbed.status(state_dir=state)
        ips = {n: d["ip"] for n, d in st["devices"].items()}
        paths = Paths.at(state)
        kernel = ssh(paths, ips["pi1"], "uname -r").strip()
        print(f"guest kernel {kernel}; netem module: "
              + ssh(paths, ips["pi1"], "modprobe sch_netem && echo loaded").strip(), flush=True)
        network(paths, ips, args.seconds)
        if args.torch:
            torch_compute(paths, ips["pi1"])
    finally:
        if own:
            testbed.down(state_dir=state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
