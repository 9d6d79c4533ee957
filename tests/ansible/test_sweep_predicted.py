"""sweep.yml -e strategy=predicted against a private emulated testbed (needs root; slow).

Profiles each device of the chain, predicts every split per condition, runs only the selected
splits, says how many runs it saved, and leaves the prediction files next to the results so the
analysis compares predicted and measured.
"""

from __future__ import annotations

import json

import pytest

from tests.ansible.conftest import EmulatedTestbed, shaped_devices, stage_processes
from tests.ansible.test_sweep_playbook import SMALL, ok, said

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_predicted_sweep_measures_only_the_selection(testbed: EmulatedTestbed) -> None:
    proc = testbed.playbook("sweep.yml", **SMALL, strategy="predicted", conditions="lan,wan",
                            backends="tcp", profile_repeats="3", sweep_id="predicted", timeout=900)
    assert proc.ok, ok(proc)
    folder = testbed.results / "predicted"
    assert {p.name for p in (folder / "profiles").glob("*.json")} == {"pi1.json", "gpu.json"}
    selected = {}
    for cond in ("lan", "wan"):
        pred = json.loads((folder / f"prediction-{cond}-tcp.json").read_text())
        assert pred["schema"] == "paretopipe.prediction" and pred["config"]["network"]["label"] == cond
        selected[cond] = {s[0] for s in pred["selected"]}
        total = len(pred["predictions"])
        assert 0 < len(selected[cond]) < total
        assert said(proc, f"measuring {len(selected[cond])} of {total} split configurations"), ok(proc)
    runs = {}
    for path in folder.glob("mobilenet_v2-s*.json"):
        doc = json.loads(path.read_text())
        assert doc["status"] == "ok", (path.name, doc.get("error"))
        runs.setdefault(doc["config"]["network"]["label"], set()).add(doc["config"]["splits"][0])
    assert runs == selected
    saved = 2 * total - len(selected["lan"]) - len(selected["wan"])
    assert said(proc, f"predicted splits save {saved} of {2 * total} runs"), ok(proc)
    report = (folder / "analysis" / "report.md").read_text()
    assert "## Predicted against measured" in report
    assert (folder / "analysis" / "predicted.csv").is_file()
    assert shaped_devices(testbed) == {}
    assert stage_processes(testbed) == []
