"""The built site (``docs/build``) in a real browser: Debian's headless Chromium.

The site is served from ``site/`` on a free localhost port (a thread running
``http.server``) and driven with Playwright's Python client against
``/usr/bin/chromium`` — Playwright's own browser download is never used. Checked:
every page loads with no console error, no uncaught exception, no failed request and
no request leaving localhost (the site works offline); every tutorial page shows its
figures decoded (``naturalWidth > 0``) and links its ``.ipynb``; the search finds
``elbo`` in the API reference. Screenshots of the landing page and of each tutorial
at its first figure go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.docs

CHROMIUM = os.environ.get("STACKVI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output for failures
        pass


@pytest.fixture(scope="module")
def server(built_site: Path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(_Quiet, directory=str(built_site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the docs extra is not installed (playwright)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def pages(site: Path) -> list[str]:
    """Every page of the site, as a path relative to its root ('' is the landing page)."""
    found = [p.parent.relative_to(site).as_posix() for p in site.rglob("index.html")]
    return sorted("" if p == "." else p + "/" for p in found)


class Visit:
    """One browser tab that records what would show up in its console and network panel."""

    def __init__(self, browser, base: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(
            f"console error: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(
            f"request failed: {r.url} ({r.failure})"))
        host = urlparse(base).netloc
        self.page.on("request", lambda r: urlparse(r.url).scheme in ("http", "https")
                     and urlparse(r.url).netloc != host
                     and self.problems.append(f"off-site request: {r.url}"))

    def open(self, url: str):
        response = self.page.goto(url, wait_until="load")
        if response is None or not response.ok:
            self.problems.append(f"HTTP {response.status if response else '?'} for {url}")
        self.page.wait_for_load_state("networkidle")
        return self.page


def test_every_page_loads_cleanly(built_site, server, browser):
    paths = pages(built_site)
    assert "" in paths and any(p.startswith("tutorials/") for p in paths)
    assert any(p.startswith("api/") for p in paths)
    tab = Visit(browser, server)
    failures = {}
    for path in paths:
        tab.problems.clear()
        page = tab.open(server + path)
        if not page.locator("article.md-content__inner").count():
            tab.problems.append("no Material content area")
        if tab.problems:
            failures[path] = list(tab.problems)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = tab.open(server)
    page.screenshot(path=str(SHOTS / "landing.png"), full_page=True)
    tab.page.close()
    assert not failures, json.dumps(failures, indent=1)


def tutorial_pages(site: Path) -> list[str]:
    return sorted(p for p in pages(site) if p.startswith("tutorials/"))


def test_tutorial_pages_show_their_figures_and_link_their_notebook(built_site, server, browser):
    tutorials = tutorial_pages(built_site)
    tab = Visit(browser, server)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path in tutorials:
        page = tab.open(server + path)
        images = page.eval_on_selector_all(
            ".jupyter-wrapper img",
            "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
        assert images, f"{path}: no figure on the page"
        broken = [i for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
        assert not broken, f"{path}: {len(broken)} of {len(images)} figures not decoded"

        link = page.locator('a[download][href$=".ipynb"]').first
        href = link.get_attribute("href")
        with urllib.request.urlopen(server + path + href) as response:
            notebook = json.load(response)
        assert notebook["nbformat"] == 4 and notebook["cells"], f"{path}: bad notebook {href}"

        page.locator(".jupyter-wrapper img").first.evaluate(
            "e => e.scrollIntoView({block: 'center'})")
        page.wait_for_timeout(500)  # let Material's header finish its title transition
        name = path.split("/")[1]
        page.screenshot(path=str(SHOTS / f"tutorial_{name}.png"))
    tab.page.close()
    assert not tab.problems, "\n".join(tab.problems)
    expected = sorted(p.stem for p in (built_site.parent / "tutorials").glob("[!_]*.py"))
    assert [t.split("/")[1] for t in tutorials] == expected, "a tutorial has no page"


def test_search_finds_elbo_in_the_api_reference(built_site, server, browser):
    tab = Visit(browser, server)
    page = tab.open(server)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    search = page.locator("input.md-search__input")
    search.click()  # Material's search box, in the header at desktop widths
    results = page.locator(".md-search-result__item a")
    # A query typed before the search worker has built its index is dropped, not queued:
    # type it again until results show (or a minute has passed).
    deadline = time.monotonic() + 60
    while True:
        search.fill("")
        search.press_sequentially("elbo", delay=50)
        try:
            results.first.wait_for(timeout=5_000)
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
    hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
    assert any("api/stackvi.estimators" in h and "elbo" in h for h in hrefs), hrefs
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "search_elbo.png"))
    tab.page.close()
    assert not tab.problems, "\n".join(tab.problems)
