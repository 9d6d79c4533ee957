"""Unit tests for paretopipe.netcond: exact command lines, value parsing, output parsers."""

from __future__ import annotations

import json

import pytest

from paretopipe import netcond
from paretopipe.errors import ConfigError
from paretopipe.netcond import Condition

WAN = Condition("wan", delay_ms=50, rate_mbit=10)
WIFI = Condition("wifi", delay_ms=5, jitter_ms=1, loss_pct=0.5, rate_mbit=50)


def test_packaged_conditions_have_the_promised_entries():
    table = netcond.load_conditions()
    assert table["lan"] == Condition("lan", delay_ms=0.5, rate_mbit=1000)
    assert table["wifi"] == Condition("wifi", delay_ms=5, jitter_ms=1, rate_mbit=50)
    assert table["wan"] == Condition("wan", delay_ms=50, rate_mbit=10)
    assert table["congested"] == Condition("congested", delay_ms=200, rate_mbit=5)


def test_conditions_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "c.yml"
    bad.write_text("conditions:\n  x: {delay: 5ms, speed: 3mbit}\n")
    with pytest.raises(ConfigError, match="unknown keys.*speed"):
        netcond.load_conditions(bad)
    bad.write_text("conditions:\n  x: {delay: fast}\n")
    with pytest.raises(ConfigError, match="bad time 'fast'"):
        netcond.load_conditions(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        netcond.load_conditions(tmp_path / "missing.yml")


@pytest.mark.parametrize(
    ("text", "ms"), [("20ms", 20.0), ("0.5ms", 0.5), ("200us", 0.2), ("1s", 1000.0), (7, 7.0)]
)
def test_parse_delay(text, ms):
    assert netcond.parse_delay(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    ("text", "mbit"),
    [("10mbit", 10.0), ("1gbit", 1000.0), ("500kbit", 0.5), ("1mbps", 8.0), (None, None)],
)
def test_parse_rate(text, mbit):
    assert netcond.parse_rate(text) == (pytest.approx(mbit) if mbit is not None else None)


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError):
        netcond.parse_rate("10 furlongs")
    with pytest.raises(ConfigError, match="jitter"):
        Condition("x", delay_ms=1, jitter_ms=2)
    with pytest.raises(ConfigError, match="loss"):
        Condition("x", loss_pct=100)
    with pytest.raises(ConfigError, match="rate"):
        Condition("x", rate_mbit=0)
    with pytest.raises(ConfigError, match="not an IPv4"):
        netcond.egress_commands("eth0", ["pi2"], WAN)
    with pytest.raises(ConfigError, match="no peers"):
        netcond.egress_commands("eth0", [], WAN)


def test_tbf_sizes_its_bucket_and_queue_from_rate_and_delay():
    # 10 Mbit/s: 4 ms is 5000 B < 16 KiB floor; queue = burst + (2*50 ms + 20 ms) of rate.
    assert netcond.tbf_burst_limit(10, 50) == (16384, 16384 + 150000)
    # 1 Gbit/s: 4 ms = 500000 B; queue floor of 50 ms.
    assert netcond.tbf_burst_limit(1000, 0.5) == (500000, 500000 + 6250000)


def test_egress_with_netem_pins_the_exact_commands():
    cmds = netcond.egress_commands("eth0", ["10.0.0.2", "10.0.0.3"], WIFI)
    assert cmds == [
        ["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb",
         "rate", "10gbit", "quantum", "60000"],
        ["tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
         "rate", "10gbit", "quantum", "60000"],
        ["tc", "qdisc", "add", "dev", "eth0", "parent", "1:10", "handle", "10:",
         "netem", "delay", "5ms", "1ms", "loss", "0.5%", "limit", "4166"],
        ["tc", "qdisc", "add", "dev", "eth0", "parent", "10:1", "handle", "20:",
         "tbf", "rate", "50mbit", "burst", "25000", "limit", "337500"],
        ["tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "dst", "10.0.0.2/32", "flowid", "1:10"],
        ["tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "dst", "10.0.0.3/32", "flowid", "1:10"],
    ]


def test_egress_without_netem_puts_tbf_straight_under_the_peer_class():
    cmds = netcond.egress_commands("eth0", ["10.0.0.2"], WAN, netem=False)
    assert ["tc", "qdisc", "add", "dev", "eth0", "parent", "1:10", "handle", "20:",
            "tbf", "rate", "10mbit", "burst", "16384", "limit", "166384"] in cmds
    assert not any("netem" in c for c in cmds)


def test_egress_delay_only_has_no_tbf_and_sub_ms_delays_stay_exact():
    cmds = netcond.egress_commands("wlan0", ["10.0.0.2"], Condition("x", delay_ms=0.5))
    assert cmds[3] == ["tc", "qdisc", "add", "dev", "wlan0", "parent", "1:10", "handle", "10:",
                       "netem", "delay", "500us"]
    assert len(cmds) == 5  # htb, 2 classes, netem, 1 filter


def test_ingress_redirects_only_peer_traffic_to_the_ifb():
    cmds = netcond.ingress_commands("eth0", "ifb0", ["10.77.0.12"], WAN)
    assert cmds == [
        ["ip", "link", "add", "ifb0", "type", "ifb"],
        ["ip", "link", "set", "dev", "ifb0", "up"],
        ["tc", "qdisc", "add", "dev", "ifb0", "root", "handle", "20:",
         "tbf", "rate", "10mbit", "burst", "16384", "limit", "166384"],
        ["tc", "qdisc", "add", "dev", "eth0", "handle", "ffff:", "ingress"],
        ["tc", "filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "src", "10.77.0.12/32",
         "action", "mirred", "egress", "redirect", "dev", "ifb0"],
    ]


def test_ingress_with_netem_chains_tbf_under_netem():
    cmds = netcond.ingress_commands("eth0", "ifb0", ["10.0.0.2"], WAN, netem=True,
                                    create_ifb=False)
    assert cmds[1] == ["tc", "qdisc", "add", "dev", "ifb0", "root", "handle", "10:",
                       "netem", "delay", "50ms", "limit", "1000"]
    assert cmds[2][:8] == ["tc", "qdisc", "add", "dev", "ifb0", "parent", "10:1", "handle"]


def test_clear_commands():
    assert netcond.clear_commands("eth0", "ifb0") == [
        ["tc", "qdisc", "del", "dev", "eth0", "root"],
        ["tc", "qdisc", "del", "dev", "eth0", "ingress"],
        ["ip", "link", "del", "ifb0"],
    ]
    assert netcond.clear_commands("eth0") == netcond.clear_commands("eth0", None)[:2]


def test_iptables_loss_then_queue_on_prerouting():
    cmds = netcond.iptables_commands(["10.0.0.2", "10.0.0.3"], loss_pct=2, queue=0)
    assert cmds == [
        ["iptables", "-t", "mangle", "-N", "PP-SHAPE"],
        ["iptables", "-t", "mangle", "-A", "PP-SHAPE", "-m", "statistic", "--mode", "random",
         "--probability", "0.02", "-j", "DROP"],
        ["iptables", "-t", "mangle", "-A", "PP-SHAPE", "-j", "NFQUEUE", "--queue-num", "0"],
        ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", "10.0.0.2/32", "-j", "PP-SHAPE"],
        ["iptables", "-t", "mangle", "-A", "PREROUTING", "-s", "10.0.0.3/32", "-j", "PP-SHAPE"],
    ]
    assert netcond.iptables_commands(["10.0.0.2"]) == []
    assert netcond.iptables_clear_commands(["10.0.0.2"]) == [
        ["iptables", "-t", "mangle", "-D", "PREROUTING", "-s", "10.0.0.2/32", "-j", "PP-SHAPE"],
        ["iptables", "-t", "mangle", "-F", "PP-SHAPE"],
        ["iptables", "-t", "mangle", "-X", "PP-SHAPE"],
    ]


TC_OUTPUT = """\
qdisc htb 1: dev eth0 root refcnt 3 r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000
 Sent 78419014 bytes 51803 pkt (dropped 0, overlimits 5788 requeues 0)
 backlog 0b 0p requeues 0
qdisc netem 10: dev eth0 parent 1:10 limit 1000 delay 20ms  2ms loss 0.5%
 Sent 1200 bytes 10 pkt (dropped 3, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
qdisc tbf 20: dev eth0 parent 10:1 rate 10Mbit burst 16384b lat 50ms
 Sent 1200 bytes 10 pkt (dropped 0, overlimits 7 requeues 1)
 backlog 3028b 2p requeues 1
qdisc ingress ffff: dev eth0 parent ffff:fff1 ----------------
 Sent 270684 bytes 5205 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
"""


def test_parse_tc_qdisc_reads_kinds_parents_and_counters():
    qd = netcond.parse_tc_qdisc(TC_OUTPUT)
    assert [(q["kind"], q["handle"], q["parent"]) for q in qd] == [
        ("htb", "1:", "root"), ("netem", "10:", "1:10"), ("tbf", "20:", "10:1"),
        ("ingress", "ffff:", "ffff:fff1"),
    ]
    assert qd[0]["sent_bytes"] == 78419014 and qd[0]["overlimits"] == 5788
    assert qd[1]["dropped"] == 3
    assert qd[2]["requeues"] == 1 and qd[2]["backlog_packets"] == 2
    assert netcond.configured_from_qdiscs(qd) == {
        "delay_ms": 20.0, "jitter_ms": 2.0, "loss_pct": 0.5, "rate_mbit": 10.0}


def test_parse_tc_qdisc_for_one_device_omits_dev():
    qd = netcond.parse_tc_qdisc(
        "qdisc htb 1: root refcnt 3 r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000\n"
        " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n"
        "qdisc tbf 20: parent 1:10 rate 10Mbit burst 16Kb lat 50ms \n", dev="eth1")
    assert [(q["kind"], q["dev"], q["parent"]) for q in qd] == [
        ("htb", "eth1", "root"), ("tbf", "eth1", "1:10")]
    assert netcond.configured_from_qdiscs(qd)["rate_mbit"] == 10.0


def test_configured_from_qdiscs_without_netem():
    qd = netcond.parse_tc_qdisc(
        "qdisc tbf 20: dev ifb0 root refcnt 2 rate 100Mbit burst 50000b lat 50ms \n"
        " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n")
    assert netcond.configured_from_qdiscs(qd) == {
        "delay_ms": None, "jitter_ms": None, "loss_pct": None, "rate_mbit": 100.0}


PING_OUTPUT = """\
PING 10.77.0.12 (10.77.0.12) 56(84) bytes of data.
64 bytes from 10.77.0.12: icmp_seq=1 ttl=64 time=40.6 ms
64 bytes from 10.77.0.12: icmp_seq=2 ttl=64 time=40.4 ms
64 bytes from 10.77.0.12: icmp_seq=4 ttl=64 time=52.0 ms

--- 10.77.0.12 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 303ms
rtt min/avg/max/mdev = 40.400/44.333/52.000/5.470 ms
"""


def test_parse_ping():
    out = netcond.parse_ping(PING_OUTPUT)
    assert out["transmitted"] == 4 and out["received"] == 3 and out["loss_pct"] == 25.0
    assert out["rtt_avg_ms"] == 44.333 and out["rtt_mdev_ms"] == 5.47
    assert out["times_ms"] == [40.6, 40.4, 52.0] and out["rtt_median_ms"] == 40.6
    with pytest.raises(ValueError):
        netcond.parse_ping("ping: connect: Network is unreachable")


def test_cli_dry_run_prints_the_argv_lists(capsys):
    rc = netcond.main(["apply", "--dev", "eth0", "--peers", "10.0.0.2,10.0.0.3",
                       "--delay", "20ms", "--jitter", "2ms", "--loss", "0.5%", "--rate", "10mbit",
                       "--dry-run"])
    assert rc == 0
    cmds = json.loads(capsys.readouterr().out)
    assert cmds == netcond.egress_commands(
        "eth0", ["10.0.0.2", "10.0.0.3"],
        Condition("custom", delay_ms=20, jitter_ms=2, loss_pct=0.5, rate_mbit=10))
    rc = netcond.main(["apply", "--dev", "eth0", "--peers", "10.0.0.2", "--condition", "wan",
                       "--ingress-ifb", "ifb0", "--dry-run"])
    cmds = json.loads(capsys.readouterr().out)
    assert rc == 0 and ["ip", "link", "add", "ifb0", "type", "ifb"] in cmds
    assert netcond.main(["clear", "--dev", "eth0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == netcond.clear_commands("eth0")


def test_cli_rejects_mixed_and_empty_conditions(capsys):
    assert netcond.main(["apply", "--dev", "eth0", "--peers", "10.0.0.2", "--condition", "wan",
                         "--delay", "5ms", "--dry-run"]) == 2
    assert "not both" in capsys.readouterr().err
    assert netcond.main(["apply", "--dev", "eth0", "--peers", "10.0.0.2", "--dry-run"]) == 2
    assert "nothing to apply" in capsys.readouterr().err


def test_judge_is_the_one_tolerance_rule():
    c20 = Condition("c20", delay_ms=20, rate_mbit=20)
    ok = netcond.judge(c20, rtt_ms=45.9, rate_mbit=18.1)  # bound 2 ms + 10% of 40 ms; 10% of 20
    assert ok["ok"] is True and ok["checks"]["rtt"]["bound_ms"] == 6.0 and ok["expected"] == {"rtt_ms": 40.0}
    slow = netcond.judge(c20, rtt_ms=46.1, rate_mbit=20.0)
    assert slow["ok"] is False and slow["checks"]["rtt"]["ok"] is False and slow["checks"]["rate"]["ok"] is True
    throttled = netcond.judge(c20, rtt_ms=40.0, rate_mbit=17.9)
    assert throttled["ok"] is False and throttled["checks"]["rate"]["ok"] is False
    missing = netcond.judge(c20, rtt_ms=None, rate_mbit=None)
    assert missing["ok"] is False  # nothing measured is not "within tolerance"
    lossy = netcond.judge(Condition("l", delay_ms=5, loss_pct=1, rate_mbit=10), rtt_ms=10.0, rate_mbit=3.0)
    assert lossy["ok"] is True and lossy["checks"]["rate"]["ok"] is None  # rate not judged under loss
    unshaped = netcond.judge(Condition("unshaped"), rtt_ms=0.1, rate_mbit=900.0)
    assert unshaped["ok"] is True and unshaped["checks"]["rate"]["ok"] is None
