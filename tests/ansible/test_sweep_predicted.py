"""sweep.yml -e strategy=predicted against a private emulated testbed (needs root; slow).

Profiles each device of the chain at each batch size (every codec at every boundary), predicts
every configuration (split x window x batch size x codec) per condition, runs only the selected
ones, says how many runs it saved, and leaves the prediction files next to the results so the
analysis compares predicted and measured.
"""

from __future__ import annotations

import json

import pytest

from tests.ansible.conftest import EmulatedTestbed, shaped_devices, stage_processes
from tests.ansible.test_sweep_playbook import SMALL, ok, said

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_predicted_sweep_measures_only_the_selection(testbed: EmulatedTestbed) -> None:
    proc = testbed.playbook("sweep.yml", **SMALL, windows="1,2", codecs="none,int8", strategy="predicted",
                            conditions="lan,wan", backends="tcp", profile_repeats="3", sweep_id="predicted",
                            timeout=900)
    assert proc.ok, ok(proc)
    folder = testbed.results / "predicted"
    assert {p.name for p in (folder / "profiles").glob("*.json")} == {"pi1-b2.json", "gpu-b2.json"}
    profile = json.loads((folder / "profiles" / "pi1-b2.json").read_text())
    assert profile["schema_version"] == 2
    assert {"none", "int8"} <= set(profile["codecs"]["boundaries"][0]["codecs"])
    selected = {}
    for cond in ("lan", "wan"):
        pred = json.loads((folder / f"prediction-{cond}-tcp.json").read_text())
        assert pred["schema"] == "paretopipe.prediction" and pred["config"]["network"]["label"] == cond
        assert pred["schema_version"] == 3 and pred["config"]["windows"] == [1, 2]
        assert pred["config"]["codecs"] == ["int8", "none"]
        selected[cond] = {(s["splits"][0], s["window"], s["batch_size"], s["codec"]) for s in pred["selected"]}
        assert {c[3] for c in selected[cond]} == {"none", "int8"}  # the selection is over codecs too
        total = len(pred["predictions"])
        assert 0 < len(selected[cond]) < total
        assert said(proc, f"measuring {len(selected[cond])} of {total} configurations"), ok(proc)
    runs = {}
    for path in folder.glob("mobilenet_v2-s*.json"):
        doc = json.loads(path.read_text())
        assert doc["status"] == "ok", (path.name, doc.get("error"))
        c = doc["config"]
        runs.setdefault(c["network"]["label"], set()).add((c["splits"][0], c["window"], c["batch_size"], c["codec"]))
    assert runs == selected
    saved = 2 * total - len(selected["lan"]) - len(selected["wan"])
    assert said(proc, f"predicted configurations save {saved} of {2 * total} runs"), ok(proc)
    report = (folder / "analysis" / "report.md").read_text()
    assert "## Predicted against measured" in report
    assert (folder / "analysis" / "predicted.csv").is_file()
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []
