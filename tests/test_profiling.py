"""paretopipe.profiling and the `profile` / `predict` commands, as a user runs them."""

from __future__ import annotations

import json

import pytest

from paretopipe.errors import ConfigError
from paretopipe.profiling import ProfileConfig, profile_model, read_profile, spread, write_profile
from paretopipe.splitting import block_names, split_points
from tests.cli.test_models_cli import _one_line_error
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def resnet_profile() -> dict:
    return profile_model(ProfileConfig("resnet18", batch_size=2, input_size=64, repeats=3, warmup=1, threads=1))


def test_one_entry_per_block_with_positive_medians_and_split_bytes(resnet_profile):
    doc = resnet_profile
    points = split_points("resnet18", input_size=64, batch_size=2)
    assert doc["schema"] == "paretopipe.profile" and doc["schema_version"] == 1
    assert doc["num_blocks"] == len(points) - 1 == len(doc["blocks"])
    assert [b["name"] for b in doc["blocks"]] == block_names("resnet18")
    assert [b["index"] for b in doc["blocks"]] == list(range(doc["num_blocks"]))
    assert all(b["compute_s"]["median"] > 0 for b in doc["blocks"])
    assert doc["input_bytes"] == points[0].bytes
    assert [b["output_bytes"] for b in doc["blocks"]] == [p.bytes for p in points[1:]]
    assert [b["output_shape"] for b in doc["blocks"]] == [list(p.shape) for p in points[1:]]
    s = doc["blocks"][0]["compute_s"]
    assert s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"] and s["iqr"] >= 0
    assert doc["config"]["repeats"] == 3 and doc["config"]["batch_size"] == 2 and doc["config"]["input_size"] == 64
    assert doc["host"]["hostname"] and doc["host"]["torch"] and doc["host"]["threads"] == 1
    assert doc["summary"]["fused_compute_s"]["median"] > 0


def test_profile_file_round_trip_and_no_overwrite(resnet_profile, tmp_path):
    path = write_profile(resnet_profile, tmp_path / "p.json")
    assert read_profile(path) == json.loads(path.read_text())
    with pytest.raises(ConfigError, match="never overwritten"):
        write_profile(resnet_profile, path)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_read_profile_rejects_other_files(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"schema": "paretopipe.run", "schema_version": 1}))
    with pytest.raises(ConfigError, match="not a profile file"):
        read_profile(bad)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"schema": "paretopipe.profile", "schema_version": 1, "blocks": []}))
    with pytest.raises(ConfigError, match="malformed"):
        read_profile(broken)


def test_spread_statistics():
    s = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0 and s["mean"] == 3.0
    assert s["iqr"] == pytest.approx(2.0) and s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)


def test_config_validation():
    with pytest.raises(ConfigError, match="repeats"):
        ProfileConfig("resnet18", repeats=2).validate()
    with pytest.raises(ConfigError, match="device"):
        ProfileConfig("resnet18", device="tpu").validate()


# --- the commands ---------------------------------------------------------------------------------


def test_profile_then_predict_select(tmp_path, resnet_profile):
    prof = tmp_path / "pi.json"
    proc = run_cli("profile", "resnet18", "--input-size", "64", "--batch-size", "2", "--repeats", "3",
                   "--warmup", "1", "--threads", "1", "--out", str(prof), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "15 blocks" in proc.stdout and read_profile(prof)["num_blocks"] == 15

    pred_file = tmp_path / "results" / "prediction.json"
    proc = run_cli("predict", "--profiles", f"{prof},{prof}", "--condition", "wan", "--window", "2",
                   "--select", "--json", "--out", str(pred_file))
    assert proc.returncode == 0, proc.stderr
    sel = json.loads(proc.stdout)
    assert sel["total"] == 16 and sel["saved"] == 16 - len(sel["selected"])
    # configurations (prediction v2): one window and the profiles' batch size here
    assert {(c["window"], c["batch_size"]) for c in sel["selected"]} == {(2, 2)}
    chosen = [c["splits"] for c in sel["selected"]]
    assert [0] in chosen and [15] in chosen
    assert all(f in sel["selected"] for f in sel["frontier"])
    doc = json.loads(pred_file.read_text())
    assert doc["schema"] == "paretopipe.prediction" and len(doc["predictions"]) == 16
    assert doc["config"]["network"]["label"] == "wan" and doc["config"]["network"]["delay_s"] == 0.05

    proc = run_cli("predict", "--profiles", str(prof), "--delay", "20ms", "--rate", "10mbit")
    assert proc.returncode == 0, proc.stderr
    assert "frontier:" in proc.stdout and "10 Mbit/s, 20 ms one-way" in proc.stdout

    proc = run_cli("predict", "--profiles", str(prof), "--stages", "3", "--condition", "wifi", "--select")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()  # one window x batch size: one line of splits
    label, _, splits = line.partition(": ")
    assert label == "w1 b2" and "0:0" in splits.split(",") and "15:15" in splits.split(","), line


@pytest.mark.parametrize("args, fragment", [
    (("predict", "--profiles", "/nonexistent.json", "--condition", "wan"), "cannot read profile"),
    (("predict", "--profiles", "PROFILE", "--condition", "mars"), "unknown condition 'mars'"),
    (("predict", "--profiles", "PROFILE", "--condition", "wan", "--rate", "1mbit"), "--rate goes with --delay"),
    (("predict", "--profiles", "PROFILE", "--delay", "fast"), "delay"),
    (("predict", "--profiles", "PROFILE", "--backend", "carrier-pigeon"), "no measured per-message overhead"),
    (("predict", "--profiles", "PROFILE,PROFILE,PROFILE", "--stages", "2"), "3 profiles for a 2-device chain"),
    (("profile", "nosuchnet", "--out", "OUT"), "nosuchnet"),
    (("profile", "resnet18", "--input-size", "8", "--out", "OUT"), "too small"),
])
def test_cli_errors_are_one_line(tmp_path, resnet_profile, args, fragment):
    prof = write_profile(resnet_profile, tmp_path / "p.json")
    argv = [a.replace("PROFILE", str(prof)).replace("OUT", str(tmp_path / "new.json")) for a in args]
    line = _one_line_error(run_cli(*argv))
    assert fragment in line


def test_profile_refuses_to_overwrite(tmp_path):
    out = tmp_path / "p.json"
    out.write_text("{}")
    line = _one_line_error(run_cli("profile", "resnet18", "--out", str(out)))
    assert "never overwritten" in line
