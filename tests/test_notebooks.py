"""Executes every Colab notebook in colabs/ top to bottom (nbclient, CPU) and checks it is
small and uses only the public ltjax API."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = REPO / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))
MAX_BYTES = 300 * 1024
CELL_TIMEOUT_S = 300
# `ltjax._x`, `from ltjax._x import`, `from ltjax import _x`, `ltjax.pkg._x`.
PRIVATE_IMPORT = re.compile(
    r"\bltjax(\.\w+)*\._\w+|from\s+ltjax(\.\w+)*\s+import\s+(\([^)]*\b_\w+|[^\n(]*\b_\w+)")

pytestmark = pytest.mark.slow


def _ids(paths):
  return [p.stem for p in paths]


def test_notebooks_exist():
  assert NOTEBOOKS, f"no notebooks in {COLABS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_small_and_public(path):
  assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      match = PRIVATE_IMPORT.search(cell.source)
      assert match is None, f"{path.name} uses private ltjax API: {match.group(0)!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, monkeypatch):
  # The kernel inherits this environment: the repository checkout is importable and JAX
  # stays on the CPU.
  paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(COLABS)}})
  # A smoke test by design (the notebooks explain the library, which the module tests
  # check): every cell runs.
  client.execute()  # raises CellExecutionError naming the failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
