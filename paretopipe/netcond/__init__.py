"""Network conditions: what they are, the commands that impose them, and parsers that check them.

A :class:`Condition` is one-way delay, jitter, random loss and a rate. It is imposed *per
device*, towards its peer devices only, so a condition applied on two devices gives each
direction of the link the delay (the round trip is about ``2 * delay_ms``) and caps each
direction at the rate. Traffic to anything that is not a peer (the controller's SSH) is not
shaped.

Everything that builds a command is pure: it returns argv lists (``["tc", "qdisc", ...]``) and
runs nothing. The Ansible role on real devices, the emulated testbed, and the unit tests (which
pin the exact command lines) all use the same builders.

On a device's NIC (``egress_commands``)::

    htb root 1:  default 1:1 (everything else, unshaped)
      class 1:1   rate 10gbit
      class 1:10  rate 10gbit   <- u32 filters: ip dst <peer>/32
        netem 10: delay/jitter/loss        (when wanted and the kernel has sch_netem)
          tbf 20: rate                     (child of netem, or directly under 1:10)

Ingress (``ingress_commands``, both directions for the rate): an ``ingress`` qdisc with u32
filters on ``ip src <peer>/32`` redirecting (``mirred``) to an ifb device, whose root is the same
netem/tbf chain.

Without ``sch_netem`` (the emulated testbed on this project's machines) delay and jitter come
from a user-space delay line (:mod:`paretopipe.testbed.delayline`) fed by
``iptables ... -j NFQUEUE`` and loss from ``iptables -m statistic --mode random``; see
:func:`iptables_commands`.

The modules, bottom up: :mod:`~paretopipe.netcond.units` (spellings of delays, rates, loss),
:mod:`~paretopipe.netcond.traces` (links that move: Mahimahi traces and segments tables),
:mod:`~paretopipe.netcond.conditions` (:class:`Condition`, the named conditions file),
:mod:`~paretopipe.netcond.commands` (the ``tc``/``iptables`` builders),
:mod:`~paretopipe.netcond.measure` (parsers of ``tc``/``ping`` output and the tolerance rule
:func:`judge`) and :mod:`~paretopipe.netcond.cli` (the command line). This package re-exports
the public names of all of them.

Command line for the Ansible role (``--dry-run`` prints the argv lists as JSON)::

    python -m paretopipe.netcond apply --dev eth0 --peers 10.0.0.2,10.0.0.3 \\
        --delay 20ms --jitter 2ms --loss 0.5% --rate 10mbit [--ingress-ifb ifb0] [--dry-run]
    python -m paretopipe.netcond apply --dev eth0 --peers 10.0.0.2 --condition wan
    python -m paretopipe.netcond clear --dev eth0 [--ingress-ifb ifb0] [--dry-run]
    python -m paretopipe.netcond show --dev eth0        # tc -s qdisc, parsed, as JSON
"""

from paretopipe.netcond.cli import main
from paretopipe.netcond.commands import (
    DEFAULT_CHAIN,
    clear_commands,
    egress_commands,
    ingress_commands,
    iptables_clear_commands,
    iptables_commands,
    netem_args,
    rate_change_commands,
    rate_steps,
    replay_schedule,
    tbf_args,
    tbf_burst_limit,
)
from paretopipe.netcond.conditions import (
    Condition,
    default_conditions_path,
    load_conditions,
    require_constant,
)
from paretopipe.netcond.measure import (
    DELAY_TOLERANCE_MS,
    DELAY_TOLERANCE_REL,
    RATE_TOLERANCE,
    configured_from_qdiscs,
    judge,
    parse_ping,
    parse_tc_qdisc,
)
from paretopipe.netcond.traces import (
    MIN_STEP_S,
    GilbertElliott,
    Segment,
    Trace,
    read_mahimahi,
    read_segments,
    read_trace,
)
from paretopipe.netcond.units import parse_delay, parse_loss, parse_rate

__all__ = [
    "DEFAULT_CHAIN",
    "DELAY_TOLERANCE_MS",
    "DELAY_TOLERANCE_REL",
    "RATE_TOLERANCE",
    "Condition",
    "GilbertElliott",
    "MIN_STEP_S",
    "Segment",
    "Trace",
    "clear_commands",
    "configured_from_qdiscs",
    "default_conditions_path",
    "egress_commands",
    "ingress_commands",
    "iptables_clear_commands",
    "iptables_commands",
    "judge",
    "load_conditions",
    "main",
    "netem_args",
    "parse_delay",
    "parse_loss",
    "parse_ping",
    "parse_rate",
    "parse_tc_qdisc",
    "rate_change_commands",
    "rate_steps",
    "replay_schedule",
    "read_mahimahi",
    "read_segments",
    "read_trace",
    "require_constant",
    "tbf_args",
    "tbf_burst_limit",
]
