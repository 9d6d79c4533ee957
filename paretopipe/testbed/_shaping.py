"""Network conditions on the emulated testbed: shape, unshape, and check what was achieved.

Each shaped device gets, inside its own namespace and towards its peers only:

- rate: tbf on the NIC's egress (under an htb class the u32 peer filters pick) and tbf on an
  ifb that the NIC's ingress redirects peer traffic to, so each direction is capped;
- delay, jitter, loss: netem on that ifb when the kernel has ``sch_netem``; otherwise
  ``iptables -t mangle`` rules on PREROUTING for packets from the peers: ``statistic`` drops
  for loss, then ``NFQUEUE`` to a delay line process (:mod:`paretopipe.testbed.delayline`).

Everything is on the receiving side except the egress tbf, so the sender's TCP sees a real
path rather than local queueing (TCP small queues would otherwise throttle a sender whose own
packets sit in a local delay queue). The controller is never a peer: its SSH is not shaped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from paretopipe import netcond
from paretopipe.errors import ConfigError, TestbedError
from paretopipe.netcond import Condition, judge
from paretopipe.netcond.commands import OUTAGE_RATE_MBIT, UNLIMITED_RATE_MBIT
from paretopipe.polling import poll_until
from paretopipe.testbed import _system
from paretopipe.testbed._state import Paths, Progress, State, locked, quiet
from paretopipe.testbed.topology import Topology

IFB = "ifb0"
QUEUE = 0
CHAIN = netcond.DEFAULT_CHAIN
PROBE_PORT = 45201
DELAYLINE_RT_PRIORITY = 20
PROBE_RT_PRIORITY = 10
#: what the trace follower (:mod:`paretopipe.testbed.tracefollow`) prints once it follows the clock
FOLLOWER_READY = "tracefollow: following"


def _loaded(paths: Paths) -> tuple[Topology, State]:
    state = State.load(paths)
    if state is None:
        raise TestbedError(f"the testbed is not up (no state in {paths.root}); "
                           "run `paretopipe testbed up` first")
    if state.device_kind == "vm":
        raise TestbedError("shape, unshape and check work on namespace devices; virtual devices "
                           "shape their own NIC: ansible-playbook -i <their inventory> "
                           "playbooks/netem.yml -e condition=NAME")
    return Topology.from_dict(state.topology), state


def resolve_condition(condition: Condition | str, conditions_file: str | Path | None) -> Condition:
    if isinstance(condition, Condition):
        return condition
    table = netcond.load_conditions(conditions_file)
    if condition not in table:
        raise ConfigError(f"unknown condition {condition!r} (known: {', '.join(table)}); "
                          "see `paretopipe testbed shape --list`")
    return table[condition]


def has_netem(ns: str) -> bool:
    """Whether the kernel offers sch_netem (tried on the namespace's loopback)."""
    probe = _system.run(["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem",
                         "delay", "1ms"], ns=ns, check=False)
    if probe.returncode == 0:
        _system.run(["tc", "qdisc", "del", "dev", "lo", "root"], ns=ns, check=False)
        return True
    return False


def _start_delayline(paths: Paths, topo: Topology, device: str, cond: Condition) -> dict:
    ns = topo.netns(device)
    run = paths.rundir(device)
    run.mkdir(parents=True, exist_ok=True)
    log = run / "delayline.log"
    # Real-time priority: the line sleeps in select() between packets, and a busy CPU must
    # not add its run-queue wait to the configured delay (the kernel's RT throttling still
    # caps it at 95% of a CPU).
    argv = ["ip", "netns", "exec", ns, "chrt", "-f", str(DELAYLINE_RT_PRIORITY), sys.executable,
            "-m",
            "paretopipe.testbed.delayline", "--queue", str(QUEUE),
            "--delay", f"{cond.delay_ms}ms", "--jitter", f"{cond.jitter_ms}ms"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def outcome() -> str:
        if "delayline: queue" in log.read_text():
            return "listening"
        return "exited" if proc.poll() is not None else ""

    if poll_until(outcome, 10.0, interval_s=0.02) == "listening":
        return {"role": "delayline", "device": device, "pid": proc.pid,
                "start": _system.start_time(proc.pid)}
    if proc.poll() is None:
        _system.terminate([(proc.pid, _system.start_time(proc.pid))])
    raise TestbedError(f"the delay line for {device} did not start: {log.read_text().strip()}")


def constant_part(cond: Condition) -> tuple[netcond.Trace, Condition]:
    """The trace, and the constant condition its replay starts from (the first segment's rate;
    the delay, jitter and loss of the whole trace, which must not vary)."""
    trace = cond.trace()
    first = trace.segments[0]
    for seg in trace.segments[1:]:
        if (seg.delay_ms, seg.jitter_ms, seg.loss_pct) != (first.delay_ms, first.jitter_ms, first.loss_pct):
            raise ConfigError(
                f"{trace.source}:{seg.line}: delay/jitter/loss change at {seg.t_s:g} s; the testbed's "
                "replay follows the rate only (the delay line's delay is fixed while it runs): keep "
                "them constant along the trace")
    rate = first.rate_mbit
    start = Condition(name=f"{cond.name}.t0", delay_ms=first.delay_ms, jitter_ms=first.jitter_ms,
                      loss_pct=first.loss_pct,
                      rate_mbit=UNLIMITED_RATE_MBIT if rate is None else max(rate, OUTAGE_RATE_MBIT))
    return trace, start


def plan(topo: Topology, cond: Condition, names: Sequence[str], *, netem: bool) -> dict:
    """What shaping ``names`` with ``cond`` runs in each device's namespace (pure).

    Per device: ``peers`` (IPs), ``tc`` (argv lists: egress tbf under the htb peer class;
    ingress through the ifb, with netem there when the kernel has it), ``delayline`` (whether
    a delay line serves the NFQUEUE) and ``iptables`` (loss and NFQUEUE rules; only without
    netem).
    """
    ips = {n: topo.device(n).ip for n in names}
    out = {}
    for name in names:
        peers = [ips[p] for p in names if p != name]
        tc: list[list[str]] = []
        if cond.rate_mbit is not None:
            tc += netcond.egress_commands(topo.nic, peers, cond, netem=False)
        if cond.rate_mbit is not None or (netem and not cond.is_null):
            tc += netcond.ingress_commands(topo.nic, IFB, peers, cond, netem=netem)
        user_space = not netem and (cond.has_delay or cond.loss_pct > 0)
        out[name] = {
            "peers": peers,
            "tc": tc,
            "delayline": not netem and cond.has_delay,
            "iptables": netcond.iptables_commands(
                peers, loss_pct=cond.loss_pct, queue=QUEUE if cond.has_delay else None,
                chain=CHAIN) if user_space else [],
        }
    return out


def shape(condition: Condition | str, between: Sequence[str] | None = None, *,
          conditions_file: str | Path | None = None, state_dir: str | Path | None = None,
          progress: Progress | None = None) -> dict:
    """Apply ``condition`` between the devices in ``between`` (default: all), replacing any
    condition in force. Returns the shaping record (also kept in the state file)."""
    cond = resolve_condition(condition, conditions_file)
    applied = cond
    if cond.is_trace:  # its first segment now; the follower replays the rest from each run's t0
        _, applied = constant_part(cond)  # refuses a varying delay before anything is touched
    _system.require_root()
    paths = Paths.at(state_dir)
    progress = progress or quiet
    with locked(paths):
        topo, state = _loaded(paths)
        names = list(between) if between else topo.names
        for name in names:
            topo.device(name)
        if len(set(names)) < 2:
            raise ConfigError("shape needs at least two distinct devices in --between")
        if state.shaping:
            unshape_locked(topo, state, paths, progress)
        if cond.is_null:
            progress("condition imposes nothing: links left unshaped")
            return {"condition": cond.to_dict(), "between": names, "method": None}
        netem = has_netem(topo.netns(names[0]))
        shaping: dict = {"condition": cond.to_dict(), "between": names,
                         "method": "netem" if netem else "delayline", "devices": {},
                         "processes": []}
        if cond.is_trace:
            shaping["at_rest"] = applied.to_dict()
        state.shaping = shaping
        state.save(paths)
        try:
            for name, step in plan(topo, applied, names, netem=netem).items():
                ns = topo.netns(name)
                shaping["devices"][name] = {"peers": step["peers"], "iptables": False}
                state.save(paths)
                for cmd in step["tc"]:
                    _system.run(cmd, ns=ns)
                if step["delayline"]:
                    shaping["processes"].append(_start_delayline(paths, topo, name, applied))
                    state.save(paths)
                if step["iptables"]:
                    shaping["devices"][name]["iptables"] = True
                    state.save(paths)
                    for cmd in step["iptables"]:
                        _system.run(cmd, ns=ns)
                progress(f"shaped {name} towards {', '.join(p for p in names if p != name)}: "
                         f"{applied.describe()}")
            if cond.is_trace:
                follower, shaping["trace"] = _start_follower(paths, topo, cond, names, netem=netem)
                shaping["processes"].append(follower)
                state.save(paths)
                progress(f"trace {cond.name}: replayed from each run's first counted batch; the source "
                         f"signals it through {shaping['trace']['clock']}")
        except BaseException:
            unshape_locked(topo, state, paths, progress)
            raise
        return shaping


def _start_follower(paths: Paths, topo: Topology, cond: Condition, names: Sequence[str], *,
                    netem: bool) -> tuple[dict, dict]:
    """Start the trace follower (:mod:`paretopipe.testbed.tracefollow`): its process record and
    the shaping's ``trace`` entry (``clock``: the file the source signals its t0 through)."""
    run = paths.root / "run" / "trace"
    run.mkdir(parents=True, exist_ok=True)
    files = {"clock": str(run / "clock.json"), "log": str(run / "follow.jsonl"),
             "spec": str(run / "spec.json")}
    Path(files["clock"]).unlink(missing_ok=True)
    Path(files["spec"]).write_text(json.dumps({
        "topology": topo.to_dict(), "between": list(names), "netem": netem, "ifb": IFB,
        "condition": cond.to_dict(), "clock": files["clock"], "log": files["log"]}))
    log = run / "follow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "paretopipe.testbed.tracefollow", "--spec", files["spec"]],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def outcome() -> str:
        if FOLLOWER_READY in log.read_text():
            return "following"
        return "exited" if proc.poll() is not None else ""

    record = {"role": "tracefollow", "device": "controller", "pid": proc.pid,
              "start": _system.start_time(proc.pid)}
    if poll_until(outcome, 20.0, interval_s=0.05) == "following":
        return record, files
    if proc.poll() is None:
        _system.terminate([(proc.pid, record["start"])])
    raise TestbedError(f"the trace follower did not start: {log.read_text().strip()}")


def unshape_locked(topo: Topology, state: State, paths: Paths, progress: Progress) -> None:
    shaping = state.shaping or {}
    errors = []
    # The follower first: a rate change after the qdiscs are gone would only fail, but stop it
    # before anything else so nothing moves while the shaping is taken down.
    followers = [(p["pid"], p.get("start")) for p in shaping.get("processes", []) if p.get("role") == "tracefollow"]
    try:
        _system.terminate(followers)
    except TestbedError as exc:
        errors.append(str(exc))
    for name, dev in shaping.get("devices", {}).items():
        ns = topo.netns(name)
        if ns not in _system.netns_list():
            continue
        if dev.get("iptables"):
            for cmd in netcond.iptables_clear_commands(dev["peers"], chain=CHAIN):
                _system.run(cmd, ns=ns, check=False)
        for cmd in netcond.clear_commands(topo.nic, IFB):
            _system.run(cmd, ns=ns, check=False)
        left = _shaping_left(topo, name)
        if left:
            errors.append(f"{name}: {', '.join(left)}")
    procs = [(p["pid"], p.get("start")) for p in shaping.get("processes", []) if p.get("role") != "tracefollow"]
    try:
        if _system.terminate(procs):
            progress(f"stopped {len(procs)} delay line(s)")
        if followers:
            progress("stopped the trace follower")
    except TestbedError as exc:
        errors.append(str(exc))
    if errors:
        state.save(paths)
        raise TestbedError("unshape left shaping in place: " + "; ".join(errors))
    if shaping:
        progress("removed shaping")
    state.shaping = None
    state.save(paths)


def _shaping_left(topo: Topology, device: str) -> list[str]:
    ns = topo.netns(device)
    left = []
    qd = netcond.parse_tc_qdisc(_system.run(["tc", "-s", "qdisc", "show"], ns=ns).stdout)
    left += [f"qdisc {q['kind']} on {q['dev']}" for q in qd
             if q["kind"] in ("htb", "tbf", "netem", "ingress")]
    if _system.link_exists(IFB, ns=ns):
        left.append(f"link {IFB}")
    rules = _system.run(["iptables", "-t", "mangle", "-S"], ns=ns).stdout
    if CHAIN in rules:
        left.append(f"iptables chain {CHAIN}")
    return left


def unshape(*, state_dir: str | Path | None = None, progress: Progress | None = None) -> dict:
    """Remove the condition in force (qdiscs, ifbs, iptables rules, delay lines)."""
    _system.require_root()
    paths = Paths.at(state_dir)
    with locked(paths):
        topo, state = _loaded(paths)
        was = state.shaping
        unshape_locked(topo, state, paths, progress or quiet)
        return {"changed": bool(was), "removed": was}


# --- check -------------------------------------------------------------------------------------


def _ping(topo: Topology, src: str, dst_ip: str, count: int, expected_rtt_ms: float) -> dict:
    deadline = int(count * 0.1 + 4 * expected_rtt_ms / 1e3 + 3)
    # -U: user-to-user time. The kernel's receive timestamp would be taken before a
    # receiver-side delay line holds the reply, and so would hide that delay.
    # At real-time priority, so the figure is the link's, not this CPU's run queue.
    proc = _system.run(["chrt", "-f", str(PROBE_RT_PRIORITY), "ping", "-U", "-n", "-c", str(count), "-i", "0.1",
                        "-w", str(deadline), dst_ip], ns=topo.netns(src), check=False,
                       timeout=deadline + 5)
    try:
        return netcond.parse_ping(proc.stdout)
    except ValueError as exc:
        raise TestbedError(f"ping from {src} to {dst_ip} gave no summary: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}") from exc


def transfer(topo: Topology, src: str, dst: str, *, seconds: float | None = None,
             nbytes: int | None = None, warmup_s: float = 0.5, sha256: bool = False,
             port: int = PROBE_PORT, timeout_s: float = 60.0, bin_s: float | None = None,
             epoch: float | None = None) -> dict:
    """Bulk TCP from device ``src`` to ``dst``; returns the receiver's and sender's reports
    (with ``bin_s``, the receiver's bytes per bin counted from ``epoch``, a ``time.monotonic``)."""
    dst_ip = topo.device(dst).ip
    py = ["nice", "-n", "-5", sys.executable, "-m", "paretopipe.testbed.probe"]
    recv_argv = ["ip", "netns", "exec", topo.netns(dst), *py, "recv", "--bind", dst_ip,
                 "--port", str(port), "--warmup", f"{warmup_s:.3f}", "--timeout", str(timeout_s)]
    send_argv = ["ip", "netns", "exec", topo.netns(src), *py, "send", "--host", dst_ip,
                 "--port", str(port)]
    if bin_s is not None:
        recv_argv += ["--bin", f"{bin_s}"] + (["--epoch", f"{epoch:.6f}"] if epoch is not None else [])
    if sha256:
        recv_argv.append("--sha256")
        send_argv.append("--sha256")
    send_argv += ["--seconds", f"{seconds}"] if nbytes is None else ["--bytes", str(nbytes)]
    receiver = subprocess.Popen(recv_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        first = receiver.stdout.readline() if receiver.stdout else ""
        if "listening" not in first:
            receiver.wait(timeout=5)
            raise TestbedError(f"probe receiver on {dst} did not start: "
                               f"{receiver.stderr.read().strip() if receiver.stderr else ''}")
        sender = subprocess.run(send_argv, capture_output=True, text=True, timeout=timeout_s)
        if sender.returncode != 0:
            raise TestbedError(f"probe sender on {src} failed: {sender.stderr.strip()}")
        out, err = receiver.communicate(timeout=timeout_s)
        if receiver.returncode != 0:
            raise TestbedError(f"probe receiver on {dst} failed: {err.strip()}")
        return {"recv": json.loads(out.strip().splitlines()[-1]),
                "send": json.loads(sender.stdout.strip().splitlines()[-1])}
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def check(pair: Sequence[str] | None = None, *, state_dir: str | Path | None = None,
          duration_s: float | None = None, pings: int = 10) -> dict:
    """Measure RTT (ping) and rate (timed bulk TCP) between two devices; compare with the
    condition in force.

    Returns ``{configured: {delay_ms, jitter_ms, loss_pct, rate_mbit, name}, measured:
    {rtt_ms, rate_mbit, ...}, expected: {rtt_ms}, checks: {...}, ok: bool}``. The RTT must be
    within 2 ms + 10% of ``2 * delay_ms`` (the delay applies in each direction; ``rtt_ms`` is
    the median of the pings); the rate (TCP goodput, which is about 4.4% below the L2 rate tbf
    counts, for the Ethernet/IP/TCP headers) within 10% of ``rate_mbit``. With loss configured
    the rate is reported, not judged (TCP backs off on loss by design).
    """
    _system.require_root()
    paths = Paths.at(state_dir)
    topo, state = _loaded(paths)
    shaping = state.shaping
    if pair is None:
        pair = (shaping["between"][:2] if shaping else topo.names[:2])
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError("check needs two different devices, e.g. --pair pi1,pi2")
    src, dst = pair
    topo.device(src)
    topo.device(dst)
    # A trace at rest between runs holds its first segment: that is what can be checked here
    # (`testbed check --trace` replays it and judges every bin).
    cond = (Condition(**shaping.get("at_rest") or shaping["condition"]) if shaping
            else Condition(name="unshaped"))
    shaped_pair = bool(shaping) and src in shaping["between"] and dst in shaping["between"]
    if not shaped_pair:
        cond = Condition(name="unshaped")
    expected_rtt = 2 * cond.delay_ms
    ping = _ping(topo, src, topo.device(dst).ip, pings, expected_rtt)
    rtt_s = max(expected_rtt / 1e3, 0.001)
    if duration_s is None:
        duration_s = min(10.0, max(2.0, 15 * rtt_s))
    warmup = min(max(0.3 * duration_s, 5 * rtt_s), 0.6 * duration_s)
    if cond.rate_mbit is not None:
        nbytes = int(cond.rate_mbit * 1e6 / 8 * duration_s)
        xfer = transfer(topo, src, dst, nbytes=nbytes, warmup_s=warmup,
                        timeout_s=max(60.0, 6 * duration_s))
    else:
        xfer = transfer(topo, src, dst, seconds=min(duration_s, 2.0), warmup_s=0.5)
    measured = {
        "rtt_ms": ping["rtt_median_ms"],
        "rtt_avg_ms": ping["rtt_avg_ms"],
        "rtt_min_ms": ping["rtt_min_ms"],
        "rtt_max_ms": ping["rtt_max_ms"],
        "rtt_mdev_ms": ping["rtt_mdev_ms"],
        "ping_loss_pct": ping["loss_pct"],
        "rate_mbit": xfer["recv"].get("rate_mbit"),
        "transfer_bytes": xfer["recv"]["bytes"],
        "transfer_s": xfer["recv"].get("duration_s"),
    }
    # The median RTT: one ping delayed by a busy CPU should not fail a link that is right.
    verdict = judge(cond, rtt_ms=measured["rtt_ms"], rate_mbit=measured["rate_mbit"])
    return {
        "pair": [src, dst],
        "method": shaping.get("method") if shaped_pair else None,
        "configured": {"name": cond.name, "delay_ms": cond.delay_ms, "jitter_ms": cond.jitter_ms,
                       "loss_pct": cond.loss_pct, "rate_mbit": cond.rate_mbit},
        "expected": verdict["expected"],
        "measured": measured,
        "tolerance": verdict["tolerance"],
        "checks": verdict["checks"],
        "ok": verdict["ok"],
    }
