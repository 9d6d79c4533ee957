"""Host contention during a run (issue 24): what the source records in ``summary.contention``."""

from __future__ import annotations

import time

from paretopipe.metrics import HostContention, contention_summary


def _host(busy: float, wall: float = 1.0, cores: int = 2, steal: float = 0.0, load: float = 0.5) -> dict:
    return {"wall_s": wall, "cores": cores, "host_busy_cpu_s": busy, "steal_fraction": steal,
            "loadavg_1m": [load, load]}


def test_the_runs_own_stages_on_this_kernel_are_not_other_processes() -> None:
    envs = [{"index": 0, "boot_id": "A"}, {"index": 1, "boot_id": "A"}, {"index": 2, "boot_id": "B"}]
    stages = [{"index": 0, "cpu_percent": 50.0, "wall_s": 1.0}, {"index": 1, "cpu_percent": 100.0, "wall_s": 1.0},
              {"index": 2, "cpu_percent": 100.0, "wall_s": 1.0}]  # stage 2 is on another machine
    quiet = contention_summary(_host(1.7), stages, envs)
    assert quiet is not None
    assert abs(quiet["run_cpu_s"] - 1.5) < 1e-9 and abs(quiet["others_cpu_s"] - 0.2) < 1e-9
    assert not quiet["contended"] and quiet["reason"] is None
    busy = contention_summary(_host(2.0 + 0.5), stages, envs)  # others: 1.0 s of 2 core-seconds
    assert busy is not None and busy["contended"] and "other processes used 50%" in busy["reason"]


def test_steal_and_load_flag_contention_and_nothing_recorded_is_none() -> None:
    envs = [{"index": 0, "boot_id": "A"}]
    stages = [{"index": 0, "cpu_percent": 10.0, "wall_s": 1.0}]
    stolen = contention_summary(_host(0.1, steal=0.2), stages, envs)
    assert stolen is not None and stolen["reason"] == "CPU steal 20%"
    loaded = contention_summary(_host(0.1, load=3.0), stages, envs)
    assert loaded is not None and loaded["reason"] == "load average 3.0 over 2 core(s)"
    assert contention_summary({}, stages, envs) is None


def test_host_contention_sees_this_process_burn_cpu() -> None:
    probe = HostContention().start()
    # busy until 0.2 s passed on both clocks: CPU time can run ahead of the wall clock (another
    # thread of this process), so a loop on process_time alone may end before 0.2 s of wall time
    t0, w0 = time.process_time(), time.monotonic()
    while time.process_time() - t0 < 0.2 or time.monotonic() - w0 < 0.2:
        pass
    got = probe.stop()
    assert got["wall_s"] >= 0.2 and got["cores"] >= 1
    assert got["host_busy_cpu_s"] >= 0.15  # at least this process's busy loop (clock ticks: 10 ms)
    assert 0.0 <= got["steal_fraction"] <= 1.0 and len(got["loadavg_1m"]) == 2
