"""Replayed stages (paretopipe.runtime.replay): profiled time through the real runtime."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest
import torch

from paretopipe.errors import ConfigError
from paretopipe.profiling import ProfileConfig, profile_model
from paretopipe.results import validate_result
from paretopipe.runtime.compute import HostBuffers
from paretopipe.runtime.replay import (
    TOO_SLOW, ReplayCompute, ReplaySetting, ReplayTiming, _draw, load_replay_profile,
)
from paretopipe.runtime.source import RunConfig, RunFailed, run
from tests.cli.test_models_cli import _one_line_error
from tests.conftest import run_cli

SMALL = {"model": "resnet18", "batch_size": 2, "input_size": 64, "warmup": 1, "min_batches": 1, "threads": 1,
         "connect_timeout_s": 30, "timeout_s": 30}
# each block of the "slow" profile. resnet18's 15 blocks at 64 px take ~10 ms in all on an idle
# host here; at 4 ms a block a host busy with other work overran it (the overrun rule doing its
# job), so the profile leaves a 15x margin and a replayed test does not depend on the host's load
BLOCK_S = 0.010


@pytest.fixture(scope="module")
def measured() -> dict:
    return profile_model(ProfileConfig("resnet18", batch_size=2, input_size=64, repeats=3, warmup=1, threads=1,
                                       codecs=("none",), codec_repeats=1))


def _timed(doc: dict, per_block: dict[str, float]) -> dict:
    out = copy.deepcopy(doc)
    for b in out["blocks"]:
        b["compute_s"] = dict(per_block)
    return out


def _write(tmp: Path, name: str, doc: dict) -> Path:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def profiles(measured, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("profiles")
    slow = {"median": BLOCK_S, "min": 0.75 * BLOCK_S, "p10": 0.875 * BLOCK_S, "p90": 1.25 * BLOCK_S,
            "max": 1.5 * BLOCK_S, "iqr": 0.25 * BLOCK_S, "mean": BLOCK_S}
    fast = {"median": 1e-7, "min": 1e-7, "p10": 1e-7, "p90": 1e-7, "max": 1e-7, "iqr": 0.0, "mean": 1e-7}
    return {"slow": _write(tmp, "slow", _timed(measured, slow)), "fast": _write(tmp, "fast", _timed(measured, fast))}


# ------------------------------------------------------------------ the step, in process


def test_draw_follows_the_recorded_quantiles():
    s = {"min": 1.0, "p10": 2.0, "median": 3.0, "p90": 4.0, "max": 5.0}
    assert [_draw(s, u) for u in (0.0, 0.1, 0.3, 0.5, 0.9, 1.0)] == pytest.approx([1.0, 2.0, 2.5, 3.0, 4.0, 5.0])
    assert _draw({"median": 0.2}, 0.7) == 0.2  # only a median recorded: the median


def test_budget_is_the_block_medians_or_a_seeded_draw(profiles):
    prof = load_replay_profile(profiles["slow"])
    median = ReplayCompute(ReplaySetting(prof), blocks=(2, 7), stage_index=1, seed=0)
    assert median.budget(0) == median.budget(9) == pytest.approx(5 * BLOCK_S)
    draw = ReplaySetting(prof, timing=ReplayTiming.DRAW)
    a = ReplayCompute(draw, blocks=(2, 7), stage_index=1, seed=0)
    b = ReplayCompute(draw, blocks=(2, 7), stage_index=1, seed=0)
    budgets = [a.budget(i) for i in range(40)]
    assert budgets == [b.budget(i) for i in reversed(range(40))][::-1]  # seeded per batch, not per order
    assert all(5 * 0.75 * BLOCK_S <= t <= 5 * 1.5 * BLOCK_S for t in budgets) and len(set(budgets)) > 30
    assert ReplayCompute(draw, blocks=(2, 7), stage_index=1, seed=1).budget(0) != budgets[0]


def test_a_replayed_step_takes_the_profiled_time_and_sleeps(profiles):
    from paretopipe.splitting import build_stages

    prof = load_replay_profile(profiles["slow"])
    module = build_stages("resnet18", (5,), num_classes=10)[1]
    step = ReplayCompute(ReplaySetting(prof), blocks=(5, 15), stage_index=1, seed=0, module=module)
    x = torch.randn(2, 64, 16, 16)
    times, cpu = [], []
    with torch.inference_mode():
        for i in range(8):
            out, _, t0, t1, c = step(x, HostBuffers(), i)
            times.append(t1 - t0)
            cpu.append(c)
    budget = 10 * BLOCK_S
    assert tuple(out.shape) == (2, 10)
    assert min(times) >= budget  # it never returns before the profiled time
    assert statistics.median(times) == pytest.approx(budget, rel=0.25)  # loaded machine: sleep may oversleep
    # the wait is a sleep: this thread's CPU time is the real compute only, well under the wait
    assert statistics.median(cpu) < 0.6 * budget
    assert step.overruns == 0 and step.batches == 8


def test_overruns_are_counted_when_the_profile_is_faster_than_the_host(profiles):
    from paretopipe.splitting import build_stages

    prof = load_replay_profile(profiles["fast"])
    module = build_stages("resnet18", (5,), num_classes=10)[1]
    step = ReplayCompute(ReplaySetting(prof), blocks=(5, 15), stage_index=1, seed=0, module=module)
    with torch.inference_mode():
        for i in range(4):
            step(torch.randn(2, 64, 16, 16), HostBuffers(), i)
    stats = step.stats()
    assert stats["overruns"] == 4 and stats["overrun_batch_ids"] == [0, 1, 2, 3] and stats["overrun_s"] > 0


# ------------------------------------------------------------------ whole runs on loopback


def _cfg(tmp_path: Path, name: str, **kw) -> RunConfig:
    return RunConfig(**{**SMALL, "batches": 4, "out": tmp_path / f"{name}.json", **kw})


@pytest.mark.parametrize("output", ["compute", "stored"])
def test_replayed_run_gives_the_unsplit_models_logits_and_names_its_profiles(start_worker, profiles, tmp_path,
                                                                              output):
    worker = start_worker("--replay", str(profiles["slow"]), "--replay-output", output)
    doc = run(_cfg(tmp_path, output, splits=(5,), stages=(worker.address,), check=True, window=2,
                   replay=str(profiles["slow"]), replay_output=output, reference_cache=str(tmp_path / "cache")))
    assert doc["status"] == "ok" and doc["check"]["ok"] and doc["check"]["max_abs_diff"] <= 1e-5
    assert validate_result(doc) == []
    rep = doc["replay"]
    assert rep["replayed"] is True and rep["overruns"] == 0 and rep["note"] is None
    assert [s["index"] for s in rep["stages"]] == [0, 1]
    prof = json.loads(profiles["slow"].read_text())
    for st, blocks in zip(rep["stages"], ([0, 5], [5, 15])):
        assert st["output"] == output and st["timing"] == "median" and st["blocks"] == blocks
        assert st["profile"]["path"] == str(profiles["slow"].resolve())
        assert st["profile"]["sha256"] == load_replay_profile(profiles["slow"]).sha256
        assert st["profile"]["torch"] == prof["host"]["torch"] and st["profile"]["created_utc"] == prof["created_utc"]
        assert st["profile"]["host"] == prof["host"]["hostname"] and st["profile"]["device"] == "cpu"
        assert st["batches"] == 5  # warm-up included; overruns count the counted batches only
    # each stage's compute time is the profiled one (5 and 10 blocks of BLOCK_S), within a loaded host's slack
    compute = [statistics.median(b["compute_s"][i] for b in doc["batches"]) for i in (0, 1)]
    assert compute == pytest.approx([5 * BLOCK_S, 10 * BLOCK_S], rel=0.25)
    assert all(b["compute_s"][0] >= 5 * BLOCK_S and b["compute_s"][1] >= 10 * BLOCK_S for b in doc["batches"])


@pytest.mark.slow  # a whole sweep (or two runs and the analysis): over 10 s
def test_overruns_reach_the_result_file_and_the_analysis(start_worker, profiles, tmp_path):
    from analysis import load_runs

    worker = start_worker("--replay", str(profiles["fast"]))
    out = tmp_path / "sweep"
    out.mkdir()
    doc = run(_cfg(out, "over", splits=(5,), stages=(worker.address,), sweep_id="s"))
    rep = doc["replay"]
    assert rep["stages"][0]["index"] == 1 and rep["stages"][0]["overruns"] == 4 == rep["overruns"]
    assert rep["note"] == TOO_SLOW
    runs = load_runs(out, include_invalid=True)
    row = runs.iloc[0]
    assert bool(row["replayed"]) and row["replay_overruns"] == 4 and row["replay_note"] == TOO_SLOW
    assert row["placement"].endswith(f":cpu[replayed cpu@{rep['stages'][0]['profile']['host']} "
                                     f"#{rep['stages'][0]['profile']['sha256'][:8]}]")
    # a second, measured run of the same configuration: never aggregated with the replayed one
    plain = start_worker()
    run(_cfg(out, "measured", splits=(5,), stages=(plain.address,), sweep_id="measured"))
    from analysis.pareto import main as analyse

    assert analyse([str(out), "--include-invalid", "--no-plots", "--out", str(tmp_path / "a")]) == 0
    report = (tmp_path / "a" / "report.md").read_text()
    assert "(replayed)" in report and "## Replayed runs" in report
    assert "1 of 2 runs were replayed" in report and "the host was too slow to replay this device" in report
    runs = load_runs(out, include_invalid=True)
    assert sorted(runs["replayed"]) == [False, True] and runs["placement"].nunique() == 2


def test_stage_replaying_another_models_profile_fails_the_run_naming_it(start_worker, profiles, tmp_path):
    worker = start_worker("--replay", str(profiles["slow"]))
    with pytest.raises(RunFailed, match=r"replay profile .*slow.json is for model resnet18, but the run uses "
                                        r"model mobilenet_v2"):
        run(_cfg(tmp_path, "other", model="mobilenet_v2", splits=(4,), stages=(worker.address,)))


# ------------------------------------------------------------------ bad input, before anything runs


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 4}, "is for batch size 2, but the run uses batch size 4"),
    ({"input_size": 32}, "is for input size 64, but the run uses input size 32"),
    ({"model": "mobilenet_v2", "splits": (4,)}, "is for model resnet18, but the run uses model mobilenet_v2"),
])
def test_source_refuses_a_profile_of_another_run_before_any_file(profiles, tmp_path, change, message):
    cfg = _cfg(tmp_path, "bad", **{"splits": (5,), "stages": ("127.0.0.1:9",), "replay": str(profiles["slow"]),
                                   **change})
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    assert not cfg.out.exists()


def test_profile_with_missing_blocks_is_refused(measured, tmp_path):
    doc = copy.deepcopy(measured)
    doc["blocks"] = doc["blocks"][:10]
    doc["num_blocks"] = 10
    doc["codecs"]["boundaries"] = doc["codecs"]["boundaries"][:11]
    prof = load_replay_profile(_write(tmp_path, "short", doc))
    with pytest.raises(ConfigError, match=r"has 10 of resnet18's 15 blocks \(missing \[10, 11, 12, 13, 14\]\)"):
        prof.check_fits(model="resnet18", num_classes=10, input_size=64, batch_size=2, num_blocks=15)


def test_cli_refuses_a_file_that_is_not_a_profile_in_one_line(tmp_path):
    bad = _write(tmp_path, "notaprofile", {"schema": "paretopipe.run", "schema_version": 1})
    for args in (("stage", "serve", "--listen", "127.0.0.1:0", "--replay", str(bad)),
                 ("run", "--model", "resnet18", "--split", "5", "--stages", "127.0.0.1:9", "--out",
                  str(tmp_path / "r.json"), "--replay", str(bad))):
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2
        assert _one_line_error(proc) == (f"paretopipe: error: {bad} is not a profile file (schema "
                                         "'paretopipe.profile'); make one with `paretopipe profile`")
    assert not (tmp_path / "r.json").exists()


def test_cli_replay_options_need_a_profile(tmp_path):
    proc = run_cli("stage", "serve", "--listen", "127.0.0.1:0", "--replay-output", "stored", timeout=120)
    assert proc.returncode == 2
    assert _one_line_error(proc) == "paretopipe: error: --replay-timing and --replay-output need --replay PROFILE"


def test_stored_output_for_a_duration_of_file_inputs_is_refused(profiles, tmp_path):
    cfg = _cfg(tmp_path, "dur", splits=(5,), stages=("127.0.0.1:9",), batches=None, duration_s=1.0,
               input="folder:/nonexistent", replay=str(profiles["slow"]), replay_output="stored")
    with pytest.raises(ConfigError, match="--replay-output stored needs the batches known beforehand"):
        run(cfg)


def test_setting_names_bad_choices():
    with pytest.raises(ConfigError, match="--replay-output 'cached': use one of compute, stored"):
        ReplaySetting.from_options(__file__, "median", "cached")



# ------------------------------------------------------------------ the testbed and the sweeps


def test_testbed_up_refuses_a_replay_name_or_file_before_changing_anything(profiles, tmp_path):
    bad = _write(tmp_path, "notaprofile", {"hello": 1})
    state = tmp_path / "state"
    cases = [
        (f"nosuch={profiles['slow']}", "paretopipe: error: no device 'nosuch' in the testbed (devices: pi1, pi2, gpu)"),
        (f"pi1={bad}", f"paretopipe: error: {bad.resolve()} is not a profile file (schema 'paretopipe.profile'); "
                       "make one with `paretopipe profile`"),
        ("pi1", "paretopipe: error: --replay 'pi1': use DEVICE=PROFILE, e.g. --replay pi1=pi4.json,gpu=server.json"),
    ]
    for spec, message in cases:
        proc = run_cli("testbed", "up", "--state-dir", str(state), "--replay", spec, timeout=120)
        assert proc.returncode == 2 and _one_line_error(proc) == message
    assert not state.exists()  # nothing was made


def test_topology_names_replayed_devices_and_the_inventory_carries_them(profiles, tmp_path):
    from paretopipe.testbed.topology import Topology, load_topology, with_replay

    topo = with_replay(load_topology(), f"pi1={profiles['slow']}", output="stored")
    assert topo.device("pi1").replay_vars() == {"profile": str(profiles["slow"].resolve()), "timing": "median",
                                                "output": "stored"}
    assert topo.device("pi2").replay_vars() is None
    assert Topology.from_dict(topo.to_dict()) == topo  # the state file keeps it
    yml = tmp_path / "topo.yml"
    src = (Path(__file__).resolve().parents[2] / "paretopipe" / "data" / "topology.yml").read_text()
    yml.write_text(src.replace("name: gpu", f"name: gpu\n    replay: {{profile: {profiles['fast']}, timing: draw}}", 1))
    assert load_topology(yml).device("gpu").replay_vars() == {"profile": str(profiles["fast"].resolve()),
                                                              "timing": "draw", "output": "compute"}
    yml.write_text(src.replace("name: gpu", "name: gpu\n    replay: {profile: missing.json}", 1))
    with pytest.raises(ConfigError, match="cannot read profile .*missing.json"):
        load_topology(yml)


def test_sweep_refuses_a_profile_of_another_batch_size_before_any_run(profiles, tmp_path):
    proc = run_cli("sweep", "--model", "resnet18", "--input-size", "64", "--batch-sizes", "2,4", "--splits", "5",
                   "--out", str(tmp_path / "s"), "--replay", f"1={profiles['slow']}", timeout=120)
    assert proc.returncode == 2
    assert _one_line_error(proc).startswith(f"paretopipe: error: device 1: replay profile {profiles['slow'].resolve()} "
                                            "is for batch size 2, but the run uses batch size 4")
    assert not (tmp_path / "s").exists()
    proc = run_cli("sweep", "--model", "resnet18", "--out", str(tmp_path / "s"), "--replay", f"3={profiles['slow']}",
                   timeout=120)
    assert _one_line_error(proc) == ("paretopipe: error: --replay: no device 3 in a chain of 2 (devices 0..1, 0 is "
                                     "the source)")


@pytest.mark.slow  # a whole sweep (or two runs and the analysis): over 10 s
def test_a_replayed_three_device_sweep_on_loopback_matches_the_unsplit_model(profiles, tmp_path):
    """Every device replays, with stored output: no stage computes during the runs."""
    out = tmp_path / "sweep"
    spec = ",".join(f"{i}={profiles['slow']}" for i in range(3))
    proc = run_cli("sweep", "--model", "resnet18", "--input-size", "64", "--batch-sizes", "2", "--splits", "3:9",
                   "--devices", "3", "--windows", "2", "--batches", "4", "--warmup", "1", "--min-batches", "1",
                   "--threads", "1", "--out", str(out), "--replay", spec, "--replay-output", "stored", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = [p for p in out.glob("*.json")]
    doc = json.loads(path.read_text())
    assert validate_result(doc) == []
    assert [s["index"] for s in doc["replay"]["stages"]] == [0, 1, 2]
    assert all(s["output"] == "stored" for s in doc["replay"]["stages"])
    assert doc["summary"]["fidelity"]["max_abs_error"] <= 1e-5  # the logits are the unsplit model's
    compute = [statistics.median(b["compute_s"][i] for b in doc["batches"]) for i in range(3)]
    assert compute == pytest.approx([3 * BLOCK_S, 6 * BLOCK_S, 6 * BLOCK_S], rel=0.25)
