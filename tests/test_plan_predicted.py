"""The sweep planner (roles/sweep/files/plan.py) with strategy=predicted's per-condition splits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _plan_module():
    spec = importlib.util.spec_from_file_location("sweep_plan", REPO / "roles" / "sweep" / "files" / "plan.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_condition_runs_only_its_predicted_splits(tmp_path: Path) -> None:
    settings = dict(
        model="mobilenet_v2", splits="all", conditions=["lan", "wan"], backends=["tcp"], repeats=1, batch_size=8,
        window=1, warmup=5, batches=50, duration=0, min_batches=20, min_duration=0, input="synthetic",
        input_size=0, num_classes=10, seed=0, sweep_id="s", results_dir=str(tmp_path), device_results_dir="/d",
        chain=["pi1", "gpu"], chain_ips=["10.0.0.1", "10.0.0.2"], source_device="cpu", source_threads=0,
        worker_port_base=29500, connect_timeout=60, receive_timeout=60,
        splits_by_condition={"lan": "0,1,2,19", "wan": "0,18,19,18"})
    doc = _plan_module().plan(settings)
    assert doc["full_total"] == 2 * (doc["num_blocks"] + 1) and doc["total"] == 4 + 3
    runs = {c["condition"]: [r["splits"] for r in c["runs"]] for c in doc["rounds"]}
    assert runs == {"lan": [[0], [1], [2], [19]], "wan": [[0], [18], [19]]}
    # splits outside the ones asked for are not run
    settings.update(splits="0,19")
    runs = {c["condition"]: [r["splits"] for r in c["runs"]] for c in _plan_module().plan(settings)["rounds"]}
    assert runs == {"lan": [[0], [19]], "wan": [[0], [19]]}
