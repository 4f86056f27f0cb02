"""The family notebooks (02.., Colab-ready) execute top to bottom at a tiny size (JDISTILL_NOTEBOOK_TINY=1).

Each trains several small jobs (06 compiles a pod job four times), so they run with `-m slow`; in the default suite
every notebook's install cell is checked (test_install_cell.py) and its calls into jdistill against the API
(test_notebook_api.py)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
EXPECTED = {
    "02_self_distillation": ["accuracy_xi1p5", "xi=3.0"],
    "03_gated_attention": ["first_token_share_none", "layer  head      G     G+     G-  role"],
    "04_llm_distillation": ["bytes per token", "student_kd", "student_gkd", "student_offpolicy", "def clamp(x"],
    "05_self_supervised": [
        "student_random_teacher",
        "student_dino",
        "probe curve                    step  linear probe",
        "student_linear_probe_accuracy",
    ],
    "06_tpu_pod": ["TPU v4 via libtpu", "memory per chip", "v5litepod-4", "queued-resources create", "## gcloud"],
    "07_diffusion": ["teacher (Heun)", "dmd: NFE 1 FD", "(the floor)"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_at_a_tiny_size(name, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("JDISTILL_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JDISTILL_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources=resources).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    for text in EXPECTED[name]:
        assert text in outputs


def test_every_family_notebook_is_executed_by_a_test():
    family = {path.stem for path in NOTEBOOKS.glob("0[2-7]_*.ipynb")}
    assert family == set(EXPECTED)
