"""The downloadable notebooks: one per tutorial, and one opened in Jupyter runs top to bottom.

``docs/build`` writes ``site/notebooks/NAME.ipynb`` (jupytext's conversion, Python 3
kernel, no outputs). Running the quickest one with nbclient, in an empty folder and
with Jupyter's default (inline) matplotlib, is what a reader does with "Run All".
"""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.docs import ROOT, load_tool

pytestmark = pytest.mark.docs

QUICKEST = "01_quickstart"  # ~2 minutes on two cores (docs/docs.md has every tutorial's time)


def test_every_tutorial_has_its_notebook(built_site):
    tool = load_tool("notebooks")
    for path in tool.tutorials():
        downloaded = nbformat.read(built_site / "notebooks" / f"{path.stem}.ipynb", as_version=4)
        nbformat.validate(downloaded)
        assert downloaded.metadata.kernelspec.name == "python3"
        assert not any(c.get("outputs") for c in downloaded.cells if c.cell_type == "code")
        sources = [c.source for c in tool.to_notebook(path).cells]
        assert [c.source for c in downloaded.cells] == sources, f"{path.name}: stale notebook"


def test_downloaded_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    tool = load_tool("notebooks")
    site_copy = ROOT / "site" / "notebooks" / f"{QUICKEST}.ipynb"
    nb = (nbformat.read(site_copy, as_version=4) if site_copy.exists()
          else tool.to_notebook(ROOT / "tutorials" / f"{QUICKEST}.py"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # Jupyter's default backend, not CI's Agg
    monkeypatch.delenv("STACKVI_FIGDIR", raising=False)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, "the notebook ran but showed no figure"
    assert (tmp_path / "tutorials" / "figures").is_dir()  # its default FIGDIR, under its folder
    assert os.listdir(tmp_path / "tutorials" / "figures")
