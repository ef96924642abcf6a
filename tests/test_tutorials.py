"""Every tutorial runs top to bottom (each asserts its own results) and saves its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


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
