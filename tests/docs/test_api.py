"""The API reference documents every public name (read off the built site's objects.inv)."""

from __future__ import annotations

import importlib
import zlib

import pytest

from tests.docs import load_tool

pytestmark = pytest.mark.docs


def inventory(site) -> set[str]:
    """The object names in a Sphinx-format inventory (what mkdocstrings writes)."""
    raw = (site / "objects.inv").read_bytes()
    body = raw.split(b"\n", 4)[4]  # four header lines, then zlib
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines()}


def test_every_public_name_has_an_entry(built_site):
    hooks = load_tool("hooks")
    names = inventory(built_site)
    missing = []
    for module in hooks.public_modules():
        assert module in names
        exported = importlib.import_module(module)
        for member in hooks.members(module):
            home = hooks.homes()[id(getattr(exported, member))]  # the page that renders it
            where = hooks.target(home, member)
            if where.startswith("stackvi.") and where not in names:
                missing.append(f"{module}.{member} ({where})")
    assert not missing, f"not in the API reference: {missing}"
    for module in hooks.public_modules():
        assert (built_site / "api" / module / "index.html").exists()
