"""The analysis notebook runs top to bottom on the fixture records (nbclient, a real kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "analysis" / "tables.ipynb"
RECORDS = ROOT / "tests" / "fixtures" / "records"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    out = tmp_path / "analysis"
    monkeypatch.setenv("ANALYSIS_RESULTS", str(RECORDS))
    monkeypatch.setenv("ANALYSIS_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    assert (out / "index.md").exists() and (out / "base2novel.tex").exists()
    assert (out / "figures" / "kshot_accuracy.png").exists()
    text = "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
                     if output.get("output_type") == "stream")
    assert "1 failed" in text and str(out / "index.md") in text
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not any(output.get("output_type") == "error" for output in outputs)
