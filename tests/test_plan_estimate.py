"""The sweep's cost before it starts (paretopipe.plan.estimate) and the budget rule: an
over-budget plan does not start and says why and what to do instead; within budget it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from paretopipe.errors import ConfigError
from paretopipe.plan import RepeatRule, SweepSpec, make_plan
from paretopipe.plan.estimate import RunShape, check_budget, estimate_tasks, format_duration, parse_budget
from paretopipe.plan.roles import _controller_plan


def _tasks(tmp_path: Path, windows: tuple[int, ...] = (1,), splits: tuple[tuple[int, ...], ...] = ((0,), (10,))):
    spec = SweepSpec(model="mobilenet_v2", num_blocks=23, devices=2, splits=splits, windows=windows,
                     batch_sizes=(8,), codecs=("none",), conditions=("lan",), backends=("tcp",),
                     repeats=RepeatRule(count=2))
    return make_plan(spec, tmp_path).tasks


def test_estimate_counts_flops_batches_and_overhead(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path)
    shape = RunShape(warmup=5, batches=50, min_batches=20)
    slow = estimate_tasks("mobilenet_v2", tasks, shape, [1e9, 1e9], conditions=1, input_size=224,
                          run_overhead_s=0, condition_overhead_s=0)
    fast = estimate_tasks("mobilenet_v2", tasks, shape, [2e9, 2e9], conditions=1, input_size=224,
                          run_overhead_s=0, condition_overhead_s=0)
    assert slow.runs == 4
    # window 1: every split costs the whole model's FLOPs; twice the rate, half the time
    assert slow.seconds == pytest.approx(2 * fast.seconds)
    assert slow.low < slow.seconds < slow.high
    # MobileNetV2 at 224 px is about 0.6 GFLOP an image: 55 batches of 8, 4 runs at 1 GFLOP/s
    assert 4 * 55 * 8 * 0.4 < slow.seconds < 4 * 55 * 8 * 0.8
    with_overhead = estimate_tasks("mobilenet_v2", tasks, shape, [1e9, 1e9], conditions=1, input_size=224,
                                   run_overhead_s=3, condition_overhead_s=10)
    assert with_overhead.seconds == pytest.approx(slow.seconds + 4 * 3 + 10)
    # a pipelined window: the slowest stage, not the sum
    piped = estimate_tasks("mobilenet_v2", _tasks(tmp_path, windows=(4,), splits=((10,),)), shape, [1e9, 1e9],
                           input_size=224, run_overhead_s=0, condition_overhead_s=0)
    assert piped.seconds < slow.seconds / 2 / 1.2
    assert estimate_tasks("mobilenet_v2", (), shape, [1e9, 1e9]).line() == "nothing to run"


def test_parse_budget_and_its_one_line_errors() -> None:
    assert parse_budget("2h") == 7200 and parse_budget("1h30m") == 5400 and parse_budget("90m") == 5400
    assert parse_budget("45s") == 45 and parse_budget("3600") == 3600 and parse_budget(600) == 600
    assert parse_budget("none") is None and parse_budget("None") is None
    for bad in ("soon", "2x", "0", "-1h"):
        with pytest.raises(ConfigError, match="sweep_budget=2h"):
            parse_budget(bad)
    assert format_duration(3 * 86400 + 7200) == "3 d 2 h" and format_duration(75) == "1 min 15 s"


def _settings(tmp_path: Path, **kw: object) -> dict[str, object]:
    return dict(model="mobilenet_v2", num_blocks=23, splits="all", windows="1", batch_sizes="8", conditions=["lan"],
                backends=["tcp"], repeats=1, warmup=5, batches=50, duration=0, min_batches=20, min_duration=0,
                input="synthetic", input_size=0, num_classes=10, seed=0, sweep_id="s", results_dir=str(tmp_path),
                device_results_dir="/d", chain=["pi1", "gpu"], chain_ips=["10.0.0.1", "10.0.0.2"],
                source_device="cpu", source_threads=0, worker_port_base=29500, connect_timeout=60,
                receive_timeout=60, device_rates=[2e9, 50e9], **kw)


def test_an_over_budget_plan_stops_with_the_estimate_and_the_options(tmp_path: Path) -> None:
    doc = _controller_plan(_settings(tmp_path, budget="1m"))
    est, budget = doc["estimate"], doc["budget"]
    assert est["runs"] == 24 and est["seconds"] > 60 and est["low_s"] < est["seconds"] < est["high_s"]
    msg = budget["message"]
    assert budget["seconds"] == 60 and msg.startswith("the sweep is over its budget: estimated ")
    assert "for 24 run(s)" in msg and "sweep_budget is 1 min 00 s" in msg and "nothing was run" in msg
    assert "-e strategy=predicted" in msg and "-e splits=" in msg and "-e sweep_budget=none" in msg
    # already predicted: the options do not offer it again
    assert "strategy=predicted" not in _controller_plan(_settings(tmp_path, budget="1m",
                                                                  strategy="predicted"))["budget"]["message"]
    # within budget, or no budget: runs as today (no message)
    assert _controller_plan(_settings(tmp_path, budget="none"))["budget"]["message"] is None
    assert _controller_plan(_settings(tmp_path, budget="30d"))["budget"]["message"] is None
    assert check_budget(_est(10), 11) is None and check_budget(_est(12), 11) is not None


def _est(seconds: float):
    from paretopipe.plan.estimate import Estimate

    return Estimate(1, seconds, seconds / 2, seconds * 3, "test")
