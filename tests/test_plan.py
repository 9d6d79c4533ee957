"""The one planner and runner (paretopipe.plan): split grammar, dimensions, resume with a failed
file, repeats=auto, and the predicted selection. Pure: the runs are injected, no processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paretopipe.errors import ConfigError
from paretopipe.plan import (
    Configuration,
    Outcome,
    RepeatRule,
    SweepSpec,
    Task,
    make_plan,
    parse_positive_list,
    parse_repeats,
    parse_splits,
    work_through,
)
from paretopipe.plan.roles import _controller_plan
from paretopipe.plan.spec import run_id


def test_split_grammar_is_one_for_every_chain_length() -> None:
    assert parse_splits("all", 4, 2) == [(0,), (1,), (2,), (3,), (4,)]
    assert parse_splits("9,0", 23, 2) == [(0,), (9,)]
    assert parse_splits([9, 0], 23, 2) == [(0,), (9,)]
    # three devices: the named points make every non-decreasing pair; K1:K2 adds one pair
    assert parse_splits("0,4,9", 23, 3) == [(0, 0), (0, 4), (0, 9), (4, 4), (4, 9), (9, 9)]
    assert parse_splits("3:9", 23, 3) == [(3, 9)]
    assert parse_splits("all", 23, 3) == parse_splits(",".join(map(str, range(24))), 23, 3)
    assert len(parse_splits("all", 23, 3)) == 24 * 25 // 2


@pytest.mark.parametrize("bad, devices, fragment", [
    ("24", 2, "out of range for mobilenet_v2 (valid: 0..23); see `paretopipe splits mobilenet_v2`"),
    ("x", 2, "not a split point"), ("", 2, "empty"), ("9:3", 3, "non-decreasing"),
    ("3:9", 2, "a chain of 2 devices runs 1 per run")])
def test_bad_splits_name_the_fix(bad: str, devices: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_splits(bad, 23, devices, model="mobilenet_v2")


def test_lists_and_repeats_parse_or_name_the_fix() -> None:
    assert parse_positive_list("4, 1,4", "--windows") == (1, 4)
    assert parse_positive_list([8, 1], "batch_sizes") == (1, 8)
    for bad in ("0", "1,x", "", "1.5"):
        with pytest.raises(ConfigError, match="--windows"):
            parse_positive_list(bad, "--windows")
    assert parse_repeats("3") == RepeatRule(count=3)
    assert parse_repeats("AUTO", target=0.1).auto and parse_repeats("auto").maximum == 10
    with pytest.raises(ConfigError, match="neither a count nor 'auto'"):
        parse_repeats("often")
    with pytest.raises(ConfigError, match="minimum <= maximum"):
        parse_repeats("auto", minimum=5, maximum=4)


def _doc(latency: float, throughput: float) -> dict:
    return {"status": "ok", "summary": {"latency_s": {"mean": latency}, "throughput_img_s": throughput},
            "validity": {"duration_s": 1.0}}


def _spec(**kw) -> SweepSpec:
    base = dict(model="mobilenet_v2", num_blocks=23, devices=2, splits=((0,), (9,)), windows=(1, 4),
                batch_sizes=(1, 8), conditions=("lan", "wan"), backends=("tcp",))
    return SweepSpec(**{**base, **kw})


def test_dimensions_multiply_within_each_group_and_name_every_run(tmp_path: Path) -> None:
    plan = make_plan(_spec(repeats=RepeatRule(count=2)), tmp_path)
    assert plan.total == 2 * 2 * 2 * 2 * 2 and plan.done == 0 and plan.pending == plan.total
    configs = {t.config for t in plan.tasks if t.condition == "lan"}
    assert configs == {Configuration(s, w, b) for s in ((0,), (9,)) for w in (1, 4) for b in (1, 8)}
    assert Configuration((9,), 4, 8).label == "k=9 w4 b8"
    assert [c for c, _ in plan.rounds()] == ["lan", "wan"]


def test_resume_reruns_a_failed_file_and_sets_it_aside(tmp_path: Path) -> None:
    spec = _spec(splits=((0,), (9,)), windows=(1,), batch_sizes=(8,), conditions=("lan",))
    (tmp_path / "mobilenet_v2-s0-tcp-lan-b8-w1-r0.json").write_text(json.dumps(_doc(0.1, 80.0)))
    failed = tmp_path / "mobilenet_v2-s9-tcp-lan-b8-w1-r0.json"
    failed.write_text(json.dumps({"status": "failed", "error": "stage 1 died"}))
    plan = make_plan(spec, tmp_path)
    assert (plan.total, plan.done, plan.pending) == (2, 1, 1)
    assert [t.config.splits for t in plan.tasks] == [(9,)]
    seen = []

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        seen.append((path.name, path.exists()))
        path.write_text(json.dumps(_doc(0.2, 40.0)))
        return Outcome(True, _doc(0.2, 40.0), wall_s=1.0)

    reports = work_through("mobilenet_v2", plan.tasks, spec.repeats, tmp_path, execute)
    assert seen == [(failed.name, False)]  # the failed file was set aside before the rerun
    assert [r.status for r in reports] == ["ok"]
    aside = list(tmp_path.glob("mobilenet_v2-s9-tcp-lan-b8-w1-r0.failed-*.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["error"] == "stage 1 died"
    assert make_plan(spec, tmp_path).pending == 0  # and now nothing is left


def test_a_run_that_fails_has_its_file_set_aside_at_once(tmp_path: Path) -> None:
    spec = _spec(splits=((9,),), windows=(1,), batch_sizes=(8,), conditions=("lan",))

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        path.write_text(json.dumps({"status": "failed", "error": "boom"}))
        return Outcome(False, error="boom")

    reports = work_through("mobilenet_v2", make_plan(spec, tmp_path).tasks, spec.repeats, tmp_path, execute)
    assert reports[0].status == "failed" and ".failed-" in reports[0].file
    assert not (tmp_path / "mobilenet_v2-s9-tcp-lan-b8-w1-r0.json").exists()
    assert make_plan(spec, tmp_path).pending == 1


def _injected(noise: dict[tuple[int, ...], list[float]]):
    """Runs whose throughput follows a fixed sequence per split: deterministic noise."""
    calls: dict[tuple[int, ...], int] = {}

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        i = calls.get(task.config.splits, 0)
        calls[task.config.splits] = i + 1
        thr = noise[task.config.splits][i % len(noise[task.config.splits])]
        doc = _doc(8 / thr, thr)
        path.write_text(json.dumps(doc))
        return Outcome(True, doc)

    return execute, calls


def test_auto_repeats_stop_early_when_steady_and_hit_the_maximum_when_noisy(tmp_path: Path) -> None:
    rule = parse_repeats("auto")  # 5%, 3..10
    spec = _spec(splits=((0,), (9,)), windows=(1,), batch_sizes=(8,), conditions=("lan",), repeats=rule)
    plan = make_plan(spec, tmp_path)
    assert plan.total == 20 and [len(t.repeats) for t in plan.tasks] == [10, 10]
    steady = [100.0, 100.5, 99.6]
    noisy = [60.0, 140.0, 90.0, 120.0]
    execute, calls = _injected({(0,): steady, (9,): noisy})
    lines = []
    work_through("mobilenet_v2", plan.tasks, rule, tmp_path, execute, progress=lambda p: lines.append(p))
    assert calls == {(0,): 3, (9,): 10}
    steady_rec = json.loads((tmp_path / "mobilenet_v2-s0-tcp-lan-b8-w1.repeats.json").read_text())
    noisy_rec = json.loads((tmp_path / "mobilenet_v2-s9-tcp-lan-b8-w1.repeats.json").read_text())
    assert steady_rec["schema"] == "paretopipe.repeats" and steady_rec["verdict"] == "reached"
    assert steady_rec["runs"] == 3 and steady_rec["relative_ci95"]["throughput"] <= 0.05
    assert noisy_rec["verdict"] == "max" and noisy_rec["runs"] == 10
    assert noisy_rec["relative_ci95"]["throughput"] > 0.05
    assert lines[-1].left == 0 and lines[-1].ok == 13
    # resumed: both configurations are settled, nothing is planned
    again = make_plan(spec, tmp_path)
    assert again.pending == 0 and again.done == 13 == again.total


def test_predicted_selection_picks_configurations_per_condition(tmp_path: Path) -> None:
    settings = dict(
        model="mobilenet_v2", num_blocks=23, splits="all", windows="1,4", batch_sizes="8", conditions=["lan", "wan"],
        backends=["tcp"], repeats=1, warmup=5, batches=50, duration=0, min_batches=20, min_duration=0,
        input="synthetic", input_size=0, num_classes=10, seed=0, sweep_id="s", results_dir=str(tmp_path),
        device_results_dir="/d", chain=["pi1", "gpu"], chain_ips=["10.0.0.1", "10.0.0.2"], source_device="cpu",
        source_threads=0, worker_port_base=29500, connect_timeout=60, receive_timeout=60,
        selection_by_condition={"lan": [{"splits": [0], "window": 1, "batch_size": 8},
                                        {"splits": [19], "window": 4, "batch_size": 8}]})
    doc = _controller_plan(settings)
    assert doc["full_total"] == 2 * 24 * 2 and doc["total"] == 2 + 24 * 2
    lan = [t["config"] for t in doc["rounds"][0]["tasks"]]
    assert lan == [{"splits": [0], "window": 1, "batch_size": 8, "codec": "none"},
                   {"splits": [19], "window": 4, "batch_size": 8, "codec": "none"}]
    assert doc["rounds"][1]["runs"] == 48  # wan has no selection: every configuration
    assert doc["device"]["stages"] == {"tcp": ["10.0.0.2:29500"]}
    assert doc["device"]["run"]["batches"] == 50 and doc["device"]["run"]["threads"] is None


def test_predicted_selection_chooses_codecs_too(tmp_path: Path) -> None:
    """`-e strategy=predicted -e codecs=none,int8`: predict --codecs selects (split, window,
    batch, codec); the plan runs exactly those, and a selection entry without a codec (a
    prediction file before codecs) means none."""
    settings = dict(
        model="mobilenet_v2", num_blocks=23, splits="all", windows="1", batch_sizes="8", codecs="none,int8",
        conditions=["slow"], backends=["tcp"], repeats=1, warmup=5, batches=50, duration=0, min_batches=20,
        min_duration=0, input="synthetic", input_size=0, num_classes=10, seed=0, sweep_id="s",
        results_dir=str(tmp_path), device_results_dir="/d", chain=["pi1", "gpu"], chain_ips=["10.0.0.1", "10.0.0.2"],
        source_device="cpu", source_threads=0, worker_port_base=29500, connect_timeout=60, receive_timeout=60,
        selection_by_condition={"slow": [{"splits": [0], "window": 1, "batch_size": 8, "codec": "int8"},
                                         {"splits": [1], "window": 1, "batch_size": 8, "codec": "int8"},
                                         {"splits": [23], "window": 1, "batch_size": 8}]})
    doc = _controller_plan(settings)
    assert doc["full_total"] == 24 * 2 and doc["total"] == 3
    assert [(t["config"]["splits"], t["config"]["codec"]) for t in doc["rounds"][0]["tasks"]] == [
        ([0], "int8"), ([1], "int8"), ([23], "none")]


@pytest.mark.slow  # a device round through subprocess runs: 9 s alone, 11 s beside the fast tier's other worker
def test_the_device_entry_point_reports_progress_and_sets_a_failed_run_aside(tmp_path: Path) -> None:
    """`python -m paretopipe.plan run` as the source_runner role calls it: a worker that is not
    there fails the run (a file set aside), the status file ends finished, the bundle has it."""
    import socket
    import subprocess
    import sys
    import tarfile

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = dict(
        model="resnet18", num_blocks=15, splits="5", windows="1", batch_sizes="2", conditions=["none"],
        backends=["tcp"], repeats=1, warmup=1, batches=2, duration=0, min_batches=1, min_duration=0,
        input="synthetic", input_size=32, num_classes=10, seed=0, sweep_id="dev", results_dir=str(tmp_path / "ctl"),
        device_results_dir=str(tmp_path / "dev"), chain=["pi1", "gpu"], chain_ips=["127.0.0.1", "127.0.0.1"],
        source_device="cpu", source_threads=1, worker_port_base=port, connect_timeout=1, receive_timeout=5)
    made = subprocess.run([sys.executable, "-m", "paretopipe.plan", "make"], input=json.dumps(settings),
                          capture_output=True, text=True, check=True)
    plan = json.loads(made.stdout)
    job = {**plan["rounds"][0], "device": plan["device"], "network": {}}
    status, bundle = tmp_path / "run" / "progress.json", tmp_path / "run" / "b.tar.gz"
    done = subprocess.run([sys.executable, "-m", "paretopipe.plan", "run", "--status", str(status), "--log",
                           str(tmp_path / "run" / "log"), "--bundle", str(bundle)], input=json.dumps(job),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["failed"] == 1 and ".failed-" in report["runs"][0]["file"]
    state = json.loads(status.read_text())
    assert state["finished"] and state["failed"] == 1 and state["left"] == 0
    with tarfile.open(bundle) as tar:
        assert [n for n in tar.getnames() if ".failed-" in n]
    waited = subprocess.run([sys.executable, "-m", "paretopipe.plan", "wait", "--status", str(status)],
                            capture_output=True, text=True, check=True)
    assert json.loads(waited.stdout)["finished"] and "1 failed" in json.loads(waited.stdout)["line"]
    bad = subprocess.run([sys.executable, "-m", "paretopipe.plan", "make"], input=json.dumps({**settings, "windows": "0"}),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "windows" in bad.stderr


def test_repeats_auto_needs_no_pandas_on_the_source_device():
    """repeats=auto stops on a CI computed where the round runs: the source device, whose venv
    has no pandas (roles/python_env's packages). The planner's CI must not pull analysis in."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['pandas'] = None; sys.modules['analysis'] = None\n"
            "from paretopipe.plan.repeats import relative_ci\n"
            "lat, thr = relative_ci([(1.0, 10.0), (1.1, 11.0), (0.9, 9.0)])\n"
            "print(round(lat, 4), round(thr, 4))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.2484", "0.2484"]  # t(0.975, 2) * 0.1 / sqrt(3) / 1.0


def _two_device_settings(results_dir: Path, device_dir: Path) -> dict:
    return dict(
        model="mobilenet_v2", num_blocks=23, splits="0,23", windows="1", batch_sizes="8", conditions=["lan"],
        backends=["tcp"], repeats=2, warmup=5, batches=50, duration=0, min_batches=20, min_duration=0,
        input="synthetic", input_size=0, num_classes=10, seed=0, sweep_id="same-id", results_dir=str(results_dir),
        device_results_dir=str(device_dir), chain=["pi1", "gpu"], chain_ips=["10.0.0.1", "10.0.0.2"],
        source_device="cpu", source_threads=0, worker_port_base=29500, connect_timeout=60, receive_timeout=60)


def test_a_new_results_folder_never_takes_a_devices_runs_from_an_earlier_sweep(tmp_path: Path) -> None:
    """DESIGN 14: the same sweep id into a new results folder once printed "0 already done, 4
    to run" while the source skipped all 4 (its copies of the earlier sweep said ok). The devices'
    folder is now the controller's sweep identity: a new folder plans fresh runs into an empty
    device folder, the old folder resumes with its own device copies, and the counts agree."""
    device = tmp_path / "device"
    first = _controller_plan(_two_device_settings(tmp_path / "ctl-a", device))
    dev_a = Path(first["device"]["results_dir"])
    assert dev_a.parent == device and first["pending"] == 4
    # the earlier sweep ran everything on the device (not fetched or fetched: the device keeps it)
    job = first["rounds"][0]
    for t in job["tasks"]:
        task = Task.from_dict(t)
        for r in task.repeats:
            (dev_a / f"{run_id('mobilenet_v2', task, r)}.json").parent.mkdir(parents=True, exist_ok=True)
            (dev_a / f"{run_id('mobilenet_v2', task, r)}.json").write_text(json.dumps(_doc(0.1, 10.0)))
    second = _controller_plan(_two_device_settings(tmp_path / "ctl-b", device))
    dev_b = Path(second["device"]["results_dir"])
    assert dev_b != dev_a and second["done"] == 0 and second["pending"] == 4
    # what the source does with the round: nothing of the earlier sweep is in its folder
    ran: list[tuple[str, int]] = []

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        ran.append((task.config.label, repeat))
        path.write_text(json.dumps(_doc(0.05, 20.0)))
        return Outcome(True, _doc(0.05, 20.0))

    tasks = [Task.from_dict(t) for t in second["rounds"][0]["tasks"]]
    reports = work_through("mobilenet_v2", tasks, RepeatRule(count=2), dev_b, execute)
    assert [r.status for r in reports] == ["ok"] * 4 and len(ran) == 4 == second["pending"]
    # the first folder, planned again, keeps its identity (resume with the device's copies)
    again = _controller_plan(_two_device_settings(tmp_path / "ctl-a", device))
    assert again["device"]["results_dir"] == str(dev_a) and again["identity"] == first["identity"]


def test_an_unreadable_sweep_identity_is_a_one_line_refusal(tmp_path: Path) -> None:
    (tmp_path / "ctl").mkdir()
    (tmp_path / "ctl" / ".sweep-identity").write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        _controller_plan(_two_device_settings(tmp_path / "ctl", tmp_path / "dev"))


def test_runs_are_interleaved_in_a_seeded_shuffled_order_that_resumes(tmp_path: Path) -> None:
    """Issue 24: the runs of one condition go pass by pass (every configuration's r0, then r1,
    ...) in an order shuffled by the seed, so drift on the host does not line up with one
    configuration; a sweep stopped midway resumes with the rest in the order it would have run."""
    from paretopipe.plan import run_order

    spec = _spec(conditions=("lan",), repeats=RepeatRule(count=3), splits=((0,), (3,), (9,), (14,), (23,)))
    tasks = make_plan(spec, tmp_path).tasks
    order = run_order("mobilenet_v2", tasks, seed=0)
    assert [r for _, r in order] == sorted(r for _, r in order)  # pass by pass
    assert order == run_order("mobilenet_v2", tasks, seed=0)  # seeded
    assert any(run_order("mobilenet_v2", tasks, seed=s) != order for s in (1, 2, 3))
    first_pass = [i for i, r in order if r == 0]
    assert first_pass != sorted(first_pass)  # shuffled, not the spec's order

    ran: list[tuple[str, int]] = []
    stop_at = [11]

    class Stopped(Exception):
        pass

    def execute(task: Task, repeat: int, path: Path) -> Outcome:
        if len(ran) == stop_at[0]:
            stop_at[0] = -1
            raise Stopped  # the sweep is stopped midway
        ran.append((task.config.label, repeat))
        path.write_text(json.dumps(_doc(0.1, 10.0)))
        return Outcome(True, _doc(0.1, 10.0))

    with pytest.raises(Stopped):
        work_through("mobilenet_v2", tasks, spec.repeats, tmp_path, execute, seed=0)
    expected = [(tasks[i].config.label, r) for i, r in order]
    assert ran == expected[:11]
    resumed = make_plan(spec, tmp_path)
    assert resumed.done == 11 and resumed.pending == len(expected) - 11
    reports = work_through("mobilenet_v2", resumed.tasks, spec.repeats, tmp_path, execute, seed=0)
    assert ran == expected and all(r.status == "ok" for r in reports)
    assert make_plan(spec, tmp_path).pending == 0
