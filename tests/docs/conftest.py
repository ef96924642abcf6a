"""The docs stage's checks run after ``docs/build`` (``pytest -m docs tests/docs``).

A run that selects tests by marker without naming ``docs`` (the README's
``-m "not slow"``, CI's slow stage) skips them, so the main stages neither wait for a
notebook to execute nor depend on a built site. Run without ``-m``, they run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs import SITE


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("markexpr", "") or ""
    if not markexpr or "docs" in markexpr:
        return
    skip = pytest.mark.skip(reason="docs stage: run docs/build, then pytest -m docs tests/docs")
    for item in items:
        if item.get_closest_marker("docs"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def built_site() -> Path:
    if not (SITE / "index.html").exists():
        pytest.skip("site/ is not built: run docs/build first")
    return SITE
