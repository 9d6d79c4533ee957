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
    return profile_model(ProfileConfig("resnet18", batch_size=2, input_size=64, repeats=3, warmup=1, threads=1,
                                       codec_repeats=2))


def test_one_entry_per_block_with_positive_medians_and_split_bytes(resnet_profile):
    doc = resnet_profile
    points = split_points("resnet18", input_size=64, batch_size=2)
    assert doc["schema"] == "paretopipe.profile" and doc["schema_version"] == 2
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


def test_codecs_are_measured_at_every_boundary_on_the_real_activation(resnet_profile):
    from paretopipe.codecs import available_codecs

    doc = resnet_profile
    codecs = doc["codecs"]
    assert codecs["names"] == available_codecs() and codecs["repeats"] == 2
    bounds = codecs["boundaries"]
    raw = [doc["input_bytes"], *(b["output_bytes"] for b in doc["blocks"])]
    assert [b["split"] for b in bounds] == list(range(doc["num_blocks"] + 1))
    assert [b["raw_bytes"] for b in bounds] == raw
    for b in bounds:
        c = b["codecs"]
        assert set(c) == set(codecs["names"])
        assert c["none"]["ratio"] == 1.0 and c["none"]["wire_bytes"] == b["raw_bytes"]
        assert c["fp16"]["ratio"] == c["bf16"]["ratio"] == 0.5
        assert c["int8"]["ratio"] == 0.25  # before any entropy stage
        for name, m in c.items():
            assert m["wire_bytes"] == round(m["ratio"] * b["raw_bytes"])
            assert m["encode_s"]["median"] >= 0 and m["decode_s"]["median"] >= 0
        assert c["int8"]["encode_s"]["median"] > 0 and c["int8"]["decode_s"]["median"] > 0
        if "int8+zstd" in c:  # an entropy stage only shrinks what it codes, up to its small bound
            assert c["int8+zstd"]["wire_bytes"] <= c["int8"]["wire_bytes"] * 1.01 + 600
    # a ReLU's output holds many zeros: the lossless stage compresses it (measured: 0.57 here)
    after_relu = bounds[1 + [b["name"] for b in doc["blocks"]].index("relu")]["codecs"]
    if "none+zstd" in after_relu:
        assert after_relu["none+zstd"]["ratio"] < 0.75


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


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: d["blocks"][2]["compute_s"].pop("median"), r"\$\.blocks\[2\]\.compute_s: 'median' is a required property"),
    (lambda d: d["blocks"].pop(), r"\$\.blocks: \d+ blocks, but num_blocks is \d+"),
    (lambda d: d["codecs"]["boundaries"][3].update(split=4), r"\$\.codecs\.boundaries\[3\]\.split: 4, expected 3"),
    (lambda d: d["codecs"]["boundaries"][1]["codecs"].popitem(), r"\$\.codecs\.boundaries\[1\]\.codecs: .*not the same codecs"),
    (lambda d: d["codecs"]["boundaries"][0]["codecs"]["int8"].update(wire_bytes=-1), r"wire_bytes: -1 is less than the minimum of 0"),
    (lambda d: d.pop("codecs"), r"\$: 'codecs' is a required property"),
])
def test_a_malformed_profile_names_the_field_against_the_published_schema(resnet_profile, tmp_path, damage, fragment):
    doc = json.loads(json.dumps(resnet_profile))
    damage(doc)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=f"profile {path} is malformed: .*{fragment}") as err:
        read_profile(path)
    assert "re-run `paretopipe profile`" in str(err.value)


def test_spread_statistics():
    s = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0 and s["mean"] == 3.0
    assert s["iqr"] == pytest.approx(2.0) and s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)


def _old_format(doc: dict) -> dict:
    """The same profile as version 1 wrote it: no codec measurements."""
    old = {k: v for k, v in doc.items() if k != "codecs"}
    old["schema_version"] = 1
    return old


def test_version_1_profiles_are_read_and_unknown_versions_name_the_fix(resnet_profile, tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_old_format(resnet_profile)))
    assert read_profile(old)["schema_version"] == 1
    new = tmp_path / "new.json"
    new.write_text(json.dumps({**resnet_profile, "schema_version": 9}))
    with pytest.raises(ConfigError, match=r"schema_version 9; this paretopipe reads 1 and 2 \(re-run `paretopipe profile`\)"):
        read_profile(new)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**resnet_profile, "codecs": {"names": ["int8"], "boundaries": [{"split": 0}]}}))
    with pytest.raises(ConfigError, match="malformed.*codecs"):
        read_profile(broken)


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

    # over codecs: every (split, window, batch, codec) is predicted, the selection names the codec
    proc = run_cli("predict", "--profiles", f"{prof},{prof}", "--delay", "0ms", "--rate", "5mbit",
                   "--codecs", "none,int8", "--select", "--json")
    assert proc.returncode == 0, proc.stderr
    sel = json.loads(proc.stdout)
    assert sel["total"] == 2 * 16 and {c["codec"] for c in sel["selected"]} == {"none", "int8"}
    assert {"splits": [0], "window": 1, "batch_size": 2, "codec": "int8"} in sel["selected"]
    proc = run_cli("predict", "--profiles", str(prof), "--delay", "0ms", "--rate", "5mbit", "--codecs", "none,int8",
                   "--select")
    assert proc.returncode == 0, proc.stderr
    assert [line.partition(":")[0] for line in proc.stdout.strip().splitlines()] == ["w1 b2", "w1 b2 int8"]

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
    (("predict", "--profiles", "PROFILE", "--codecs", "none,int9"), "unknown codec 'int9' (valid: none, none+zstd"),
    (("predict", "--profiles", "OLD", "--codecs", "none,int8"),
     "(schema_version 1) has no codec measurements, so codec int8 cannot be predicted; re-run `paretopipe profile`"),
    (("profile", "resnet18", "--codecs", "int8,gzip", "--out", "OUT"), "unknown codec 'gzip'"),
    (("profile", "nosuchnet", "--out", "OUT"), "nosuchnet"),
    (("profile", "resnet18", "--input-size", "8", "--out", "OUT"), "too small"),
])
def test_cli_errors_are_one_line(tmp_path, resnet_profile, args, fragment):
    prof = write_profile(resnet_profile, tmp_path / "p.json")
    old = write_profile(_old_format(resnet_profile), tmp_path / "old.json")
    argv = [a.replace("PROFILE", str(prof)).replace("OLD", str(old)).replace("OUT", str(tmp_path / "new.json"))
            for a in args]
    line = _one_line_error(run_cli(*argv))
    assert fragment in line


def test_profile_refuses_to_overwrite(tmp_path):
    out = tmp_path / "p.json"
    out.write_text("{}")
    line = _one_line_error(run_cli("profile", "resnet18", "--out", str(out)))
    assert "never overwritten" in line
