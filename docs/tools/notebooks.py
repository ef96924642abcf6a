"""Turn tutorials/*.py (jupytext percent format) into the site's notebooks, executing each once.

For every tutorial this writes two generated (gitignored) files:

* ``docs/notebooks/NAME.ipynb`` — the notebook as a reader downloads it: the jupytext
  conversion with a Python 3 kernelspec and no outputs.
* ``docs/tutorials/NAME.ipynb`` — the same notebook executed (nbclient, inline
  matplotlib, so figures are embedded as PNG outputs) plus a download link under its
  title; mkdocs-jupyter renders it without executing anything.

Executing is the expensive part, so executed notebooks are cached in
``.cache/docs/executed/`` under a key made of the tutorial's source and every ``.py`` file
of the ``stackvi`` package: a build re-executes a tutorial only when it or the library
changed. ``--reuse-stale`` keys on the tutorial alone (handy while editing the library;
never in CI). A cell that raises, or runs past ``STACKVI_DOCS_CELL_TIMEOUT`` seconds (1800),
fails the build, with the tutorial named. ``STACKVI_SMOKE=1`` reaches the kernels (the
tutorials' short mode, as in the test suite) and is part of the cache key.

Usage: ``python docs/tools/notebooks.py [--reuse-stale] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "tutorials"
EXECUTED = ROOT / "docs" / "tutorials"
DOWNLOADS = ROOT / "docs" / "notebooks"
CACHE = ROOT / ".cache" / "docs" / "executed"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
# A cell may run this long (seconds) before the build fails; STACKVI_DOCS_CELL_TIMEOUT overrides.
CELL_TIMEOUT_S = int(os.environ.get("STACKVI_DOCS_CELL_TIMEOUT", "1800"))
_TQDM = "TqdmWarning: IProgress not found"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

__all__ = ["tutorials", "to_notebook", "execute", "main"]


def tutorials() -> list[Path]:
    """Every tutorial, by glob: a new tutorials/NN_name.py appears on the site by itself."""
    return sorted(p for p in TUTORIALS.glob("*.py") if not p.name.startswith("_"))


def to_notebook(path: Path) -> nbformat.NotebookNode:
    """The jupytext conversion of ``path``, as a notebook Jupyter opens with Python 3."""
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("jupytext", None)
    return nb


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(hashlib.sha256(chunk).digest())
    return h.hexdigest()[:16]


def library_digest() -> str:
    files = sorted((ROOT / "stackvi").rglob("*.py"))
    return _digest(*(str(f.relative_to(ROOT)).encode() + f.read_bytes() for f in files))


def execute(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh kernel, in an empty folder, figures inline.

    The kernel starts in a temporary folder (as a downloaded notebook would, away from
    the repository) with ``STACKVI_FIGDIR`` pointing there, so the tutorials' saved PNGs
    never land in the tree; ``MPLBACKEND`` is the inline backend (CI exports ``Agg``,
    which would show no figure).
    """
    with tempfile.TemporaryDirectory(prefix=f"stackvi-docs-{name}-") as cwd:
        env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
               "STACKVI_FIGDIR": os.path.join(cwd, "figures")}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                    resources={"metadata": {"path": cwd}})
            client.execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return nb


def for_site(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` for its page: a download link under its title cell, and without
    tqdm's "IProgress not found" warning (``tqdm.auto`` in a kernel without ipywidgets),
    which says nothing about the tutorial."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (
                o.output_type == "stream" and o.name == "stderr" and _TQDM in o.text
                and o.text.count("\n") <= 2)]
    link = nbformat.v4.new_markdown_cell(
        f'<a class="md-button" href="../../notebooks/{name}.ipynb" download>'
        f"Download this notebook ({name}.ipynb)</a>")
    link.metadata["tags"] = ["download-link"]
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(at, link)
    return nb


def build(path: Path, lib: str | None) -> tuple[str, float | None]:
    """Write both notebooks of one tutorial; return (status, seconds spent executing)."""
    name = path.stem
    nb = to_notebook(path)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, DOWNLOADS / f"{name}.ipynb")

    # STACKVI_SMOKE=1 (the tutorials' short mode, passed on to the kernel) is part of the key.
    smoke = os.environ.get("STACKVI_SMOKE", "")
    source = _digest(path.read_bytes(), *([f"smoke={smoke}".encode()] if smoke else []))
    key = f"{name}-{source}-{lib}" if lib else None
    cached = CACHE / f"{key}.ipynb" if key else None
    if cached is None:  # --reuse-stale: any execution of this very source will do
        hits = sorted(CACHE.glob(f"{name}-{source}-*.ipynb"), key=lambda p: p.stat().st_mtime)
        cached = hits[-1] if hits else CACHE / f"{name}-{source}-{library_digest()}.ipynb"
    if cached.exists():
        executed, seconds, status = nbformat.read(cached, as_version=4), None, "cached"
    else:
        start = time.perf_counter()
        try:
            executed = execute(nb, name)
        except (CellExecutionError, CellTimeoutError) as err:
            lines = _ANSI.sub("", str(err)).rstrip().splitlines()
            tail = "\n".join(lines[:12] + ["..."] + lines[-25:]) if len(lines) > 40 else str(err)
            what = (f"{err.ename}: {err.evalue}" if isinstance(err, CellExecutionError)
                    else f"a cell ran past {CELL_TIMEOUT_S} s (STACKVI_DOCS_CELL_TIMEOUT)")
            raise SystemExit(f"docs: tutorials/{path.name} failed while executing:\n{tail}\n"
                             f"docs: {path.name}: {what}") from None
        seconds, status = time.perf_counter() - start, "executed"
        CACHE.mkdir(parents=True, exist_ok=True)
        for stale in CACHE.glob(f"{name}-*.ipynb"):
            stale.unlink()
        nbformat.write(executed, cached)
    nbformat.write(for_site(executed, name), EXECUTED / f"{name}.ipynb")
    return status, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse-stale", action="store_true",
                        help="reuse an executed notebook of the same tutorial source even if "
                             "the stackvi package changed since")
    parser.add_argument("--only", nargs="*", metavar="NAME",
                        help="only these tutorials (file stems), e.g. 01_quickstart")
    args = parser.parse_args(argv)
    paths = tutorials()
    if args.only:
        paths = [p for p in paths if p.stem in set(args.only)]
    if not paths:
        print("docs: no tutorials found", file=sys.stderr)
        return 1
    wanted = {p.stem for p in tutorials()}
    for folder in (EXECUTED, DOWNLOADS):  # a removed or renamed tutorial leaves no page
        for old in folder.glob("*.ipynb") if folder.exists() else ():
            if old.stem not in wanted:
                old.unlink()
    lib = None if args.reuse_stale else library_digest()
    total = 0.0
    for path in paths:
        status, seconds = build(path, lib)
        total += seconds or 0.0
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        print(f"docs: {path.name}: {status}{took}", flush=True)
    print(f"docs: {len(paths)} tutorials, {total:.0f} s executing", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
