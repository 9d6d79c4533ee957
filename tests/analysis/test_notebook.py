"""notebooks/pareto_front.ipynb runs top to bottom (nbclient, this venv's kernel) against result
files the test makes, and is kept in the repository without outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from .analysis_fixtures import legacy_doc, write_json, write_rpc_session, write_sweep

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "pareto_front.ipynb"


def test_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def _text(cell) -> str:
    parts = []
    for out in cell.outputs:
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.mark.timeout(300)
def test_notebook_runs_top_to_bottom_on_a_results_folder(tmp_path, monkeypatch):
    results = tmp_path / "results"
    write_sweep(results)
    write_rpc_session(results / "upstream", splits=(3, 10), runs=2)
    write_json(results / "old" / "MobileNetV2_split_10_metrics.json",
               legacy_doc("MobileNetV2", 10, 20, latency=0.6, throughput=13.3, size=401408))
    monkeypatch.setenv("PARETOPIPE_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # the kernel is this interpreter (the venv's), whatever kernels the machine has elsewhere
    km = KernelManager(kernel_name="python3")
    assert km.kernel_spec.argv[1:3] == ["-m", "ipykernel_launcher"]
    km.kernel_spec.argv[0] = sys.executable

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, km=km, timeout=240, allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in c.outputs) for c in code)
    text = "\n".join(_text(c) for c in code)
    # write_sweep's corrupt and failed files, and upstream's averaged file (read: consolidated)
    assert "77 runs from 77 files; 3 skipped" in text
    assert "mobilenet_v2 · lan · tcp" in text and "delay=0.094ms" in text  # frontier, upstream
    assert "upstream-rpc" in text and "wifi-50mbit" in text  # per-condition comparison
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the per-group scatter and the per-condition bars
