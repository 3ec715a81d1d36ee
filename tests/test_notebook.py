"""The quickstart notebook runs end to end at tiny size (BPM_QUICK=1)."""

import os
import sys

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "01_quickstart.ipynb")


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
  assert "google.colab" in code[0].source and "pip install" in code[0].source


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  monkeypatch.setenv("BPM_QUICK", "1")
  monkeypatch.setenv("BPM_WORKDIR", str(tmp_path))
  # The kernel spec runs `python`: make that this interpreter, with the repo importable.
  monkeypatch.setenv(
    "PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
  )
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  images = [
    out
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
    if "image/png" in out.get("data", {})
  ]
  assert len(images) == 2  # Learning curves and the modulation plot.
  for name in ("curves.png", "modulation.png", "modplast/metrics.csv", "rnn/config.json"):
    assert (tmp_path / name).exists(), name
