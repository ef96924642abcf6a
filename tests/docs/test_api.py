"""The API reference documents every public name (read off the built site's objects.inv)."""

from __future__ import annotations

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
    missing = [f"{module}.{member}" for module in hooks.public_modules()
               for member in hooks.members(module) if f"{module}.{member}" not in names]
    assert not missing, f"not in the API reference: {missing}"
    for module in hooks.public_modules():
        assert (built_site / "api" / module / "index.html").exists()
