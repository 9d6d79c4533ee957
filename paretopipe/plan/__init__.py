"""The one sweep planner and runner: what a sweep runs, what is already done, and working through it.

Both ``paretopipe sweep`` (local workers on loopback) and the Ansible suite (``roles/sweep`` on
the controller, ``roles/source_runner`` on the source device) plan, resume and name runs here;
the roles call ``python -m paretopipe.plan make|run`` and hold no logic of their own.

**A configuration** is one value of every sweep dimension (:data:`DIMENSIONS`): split points,
window, batch size. Configurations are compared (frontier, knee, hypervolume) within a *group*:
model x network condition x backend. A run is one configuration in one group, repeated.

**The split grammar** (the same everywhere; docs/ansible.md, *Split points*). A chain of ``D``
devices runs ``D - 1`` split points per run. ``splits`` is a comma list of items:

- ``all``: every split point ``0..N`` of the model;
- ``K``: the split point K;
- ``K1:K2`` (``D - 1`` points, non-decreasing): one chain named directly.

The named points (``all`` and each ``K``) make every non-decreasing ``(D - 1)``-tuple of
them; ``K1:K2`` items are added as they are. So on two devices ``all`` is ``0..N``, and on three
devices ``all`` is every pair ``k1 <= k2``.

**The resume rule** (one, everywhere). A run is done when ``<run_id>.json`` says ``ok``. A run
that fails has its file set aside at once as ``<run_id>.failed-<UTC time>.json`` (kept: it says
what went wrong); any other ``<run_id>.json`` that does not say ``ok`` (unreadable, failed, left
by an older version) is set aside the same way before its run is done again. So running the same
sweep again runs exactly the runs that are not ok. The sweep is the controller's (DESIGN
decision 14): its results folder keeps a sweep identity (``.sweep-identity``, made when the
folder is first planned), and the devices keep their copies under it, so a new results folder
means fresh runs, never a device's files of another sweep.

**The order** (:func:`run_order`): the runs of a condition go pass by pass (every configuration's
first repeat, then every second one, ...), within a pass in an order shuffled by the sweep's seed,
so that drift on the host does not line up with one configuration; a resumed sweep keeps it.

**Repeats** are a count, or ``auto`` (:class:`RepeatRule`): repeat a configuration until the
95% confidence interval (Student t) of both objectives, latency and throughput, is within
``target`` of their means, at least ``minimum`` and at most ``maximum`` times. Each auto
configuration gets a record ``<configuration id>.repeats.json`` (schema ``paretopipe.repeats``)
saying whether it reached the target or hit the maximum; the analysis reads it.

**The cost** (:mod:`paretopipe.plan.estimate`): before the first run, both entry points print the
plan's estimated duration with its range; over the budget (``sweep_budget``, ``--budget``;
default :data:`DEFAULT_BUDGET`) the sweep does not start and says what to do instead.
"""

from __future__ import annotations

from paretopipe.plan.estimate import DEFAULT_BUDGET, Estimate, RunShape, check_budget, estimate_tasks, parse_budget
from paretopipe.plan.grammar import DIMENSIONS, Configuration, parse_positive_list, parse_splits
from paretopipe.plan.repeats import REPEATS_SCHEMA, RepeatRule, parse_repeats
from paretopipe.plan.runner import Outcome, Progress, RunReport, run_order, work_through
from paretopipe.plan.spec import (
    Plan,
    SweepSpec,
    Task,
    config_id,
    make_plan,
    objectives_of,
    run_id,
    run_state,
    set_aside,
    sweep_identity,
)

__all__ = ["DIMENSIONS", "Configuration", "RepeatRule", "SweepSpec", "Task", "Plan", "Outcome", "Progress",
           "parse_splits", "parse_positive_list", "parse_repeats", "make_plan", "run_state", "set_aside",
           "work_through", "run_order", "sweep_identity", "objectives_of", "REPEATS_SCHEMA", "RunReport", "run_id", "config_id",
           "Estimate", "RunShape", "estimate_tasks", "parse_budget", "check_budget", "DEFAULT_BUDGET"]
