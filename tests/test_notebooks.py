"""The Colab notebooks run top to bottom (in their reduced CI mode) and are committed without outputs."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
  """No outputs or execution counts (no stale results, no leaked tokens)."""
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs; clear them"
      assert "hf_" not in cell.source, "a token-like string is in the notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch):
  """Each notebook runs top to bottom on one CPU device, as on a Colab CPU runtime (not the tests' 4 fake ones)."""
  monkeypatch.setenv("DREAMJAX_NOTEBOOK_TEST", "1")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(COLAB)}}).execute()
