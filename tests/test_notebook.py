"""The quickstart notebook runs end to end at tiny size (BPM_QUICK=1), and again."""

import os
import sys

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "01_quickstart.ipynb")
OUTPUTS = ("curves.png", "modulation.png", "modplast/metrics.csv", "rnn/config.json")


def _code_cells():
  return [cell for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
  assert "Colab" in code[0].source and "pip install" in code[0].source


def test_install_cell_uses_the_checkout_or_the_users_repo_url():
  """No invented URL: the checkout the notebook sits in, else a REPO_URL the user sets."""
  install = [cell for cell in _code_cells() if "pip install" in cell.source]
  assert len(install) == 1
  source = install[0].source
  assert source.index('REPO_URL = ""') < source.index("pip install")  # Set at the top.
  assert "{CHECKOUT}" in source and "REPO_URL" in source
  assert "github.com" not in source and "http" not in source
  notebook_text = open(NOTEBOOK).read()
  assert "github.com/bpm-jax" not in notebook_text


def test_install_cell_finds_the_checkout_it_sits_in(monkeypatch):
  """Run from notebooks/ (Jupyter's cwd for it), the install cell sees the checkout."""
  monkeypatch.setenv(
    "PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
  )
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  (install,) = [cell for cell in _code_cells() if "pip install" in cell.source]
  probe = nbformat.v4.new_code_cell("print('CHECKOUT =', CHECKOUT)")
  nb = nbformat.v4.new_notebook(cells=[install, probe])
  client = NotebookClient(
    nb,
    timeout=120,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
  )
  client.execute()
  assert probe.outputs[0]["text"].strip() == f"CHECKOUT = {REPO}"
  # Already importable: nothing installed, one line saying where it comes from.
  assert [out["text"].split(" /")[0] for out in install.outputs] == ["bpm-jax from"]


def _images(nb):
  return [
    out
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
    if "image/png" in out.get("data", {})
  ]


def _texts(nb):
  return "".join(
    out.get("text", "") + str(out.get("evalue", "")) + "".join(out.get("traceback", []))
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
  )


def test_quickstart_notebook_executes_and_reruns(tmp_path, monkeypatch):
  """Run all, then the training cell and all after it again, then all again: no clash."""
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
  (train_index,) = [
    i
    for i, cell in enumerate(nb.cells)
    if cell.cell_type == "code" and "a2c_train.train_and_evaluate(" in cell.source
  ]
  everything = list(enumerate(nb.cells))
  with client.setup_kernel():
    for index, cell in everything + everything[train_index:] + everything:
      client.execute_cell(cell, index)
  assert len(_images(nb)) == 2  # Learning curves and the modulation plot.
  assert "--resume" not in _texts(nb)
  runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
  assert len(runs) == 3, runs  # One per execution of the training cell.
  for run in runs:
    for name in OUTPUTS:
      assert (run / name).exists(), (run, name)
