"""The quickstart notebook executes top to bottom at a tiny size."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "01_quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("JDISTILL_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JDISTILL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "student_kd" in outputs and "forward KL" in outputs
