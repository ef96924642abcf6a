"""Checks of the documentation site (docs/build): run with ``pytest -m docs tests/docs``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "site"


def load_tool(name: str):
    """A module of docs/tools/ (not a package: the site's build scripts)."""
    spec = importlib.util.spec_from_file_location(f"docs_tools_{name}",
                                                  ROOT / "docs" / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
