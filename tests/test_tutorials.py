"""Every tutorial runs top to bottom (each asserts its own results) and saves its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


# Half a minute to minutes each on two cores even shortened: in the slow stage, not the
# README's run. CI's docs stage executes every tutorial too (a failing cell fails the build).
@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path: Path):
    # STACKVI_SMOKE: tutorials that train long shorten their runs (same checks); others ignore it
    env = {**os.environ, "MPLBACKEND": "Agg", "STACKVI_FIGDIR": str(tmp_path), "STACKVI_SMOKE": "1"}
    proc = subprocess.run([sys.executable, str(path)], cwd=path.parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{path.name} failed:\n{tail}"
    figures = list(tmp_path.glob("*.png"))
    assert figures, f"{path.name} saved no figure into STACKVI_FIGDIR"
    assert all(f.stat().st_size > 1000 for f in figures)


def test_tutorials_exist():
    assert TUTORIALS, "no tutorials found"


NOTEBOOKS = TUTORIALS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_names_a_kernel_and_writes_figures_to_tutorials_figures(path: Path,
                                                                         tmp_path: Path):
    """``jupytext --execute`` needs a kernelspec; run from tutorials/ or the root, figures
    land in tutorials/figures (not tutorials/tutorials/figures)."""
    header = path.read_text().split("# ---", 2)[1]
    assert "kernelspec:" in header and "name: python3" in header, path.name
    code = next(line for line in path.read_text().splitlines() if line.startswith("FIGDIR"))
    block = path.read_text().split(code, 1)[1].splitlines()[1]  # the continuation line
    env = {k: v for k, v in os.environ.items() if k != "STACKVI_FIGDIR"}
    root = path.parents[1]
    for cwd in (root, root / "tutorials"):
        out = subprocess.run([sys.executable, "-c", f"import os\n{code}\n{block}\nprint("
                              "os.path.realpath(FIGDIR))"], cwd=cwd, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == str((root / "tutorials" / "figures").resolve()), (cwd, out)
