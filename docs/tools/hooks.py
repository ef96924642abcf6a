"""MkDocs hooks for the stackvi site (mkdocs.yml ``hooks:``).

* ``on_files``: one generated API page per public module (``api/<module>.md``, a
  mkdocstrings block listing the module's ``__all__``), so every public name is in the
  reference without a hand-kept list.
* ``on_files``: the navigation, with the tutorials taken by glob from the
  executed notebooks (docs/tools/notebooks.py), so a new tutorial appears by itself.
* ``on_config``: a Markdown preprocessor that fences the doctest examples in docstrings
  (``>>>`` lines and their output) as ``pycon`` code, which plain Markdown would run together
  into one paragraph; and Material without Google Fonts (offline).
* ``on_post_page``: drop the CDN ``<script>`` tags nbconvert's template adds (MathJax,
  Mermaid): the site is served offline, and a script that cannot load is a console error.

Public modules: ``stackvi`` itself, every top-level submodule or subpackage whose name does
not start with an underscore (``__main__`` excepted), and every module a documented package
lists in its ``__all__`` (``stackvi.models.vae``, ...).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

GUIDES = ["design.md", "objectives.md", "strategies.md", "benchmarks.md", "docs.md"]
_OFFSITE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>')


def public_modules() -> list[str]:
    """``stackvi`` and its public modules, in a reading order (the package first)."""
    import stackvi

    found: list[str] = []

    def visit(name: str) -> None:
        if name in found:
            return
        found.append(name)
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", ()):
            obj = getattr(module, member, None)
            if inspect.ismodule(obj) and obj.__name__.startswith(name + "."):
                visit(obj.__name__)

    visit("stackvi")
    for info in pkgutil.iter_modules(stackvi.__path__):
        if not info.name.startswith("_"):
            visit(f"stackvi.{info.name}")
    return ["stackvi"] + sorted(found[1:])


def members(name: str) -> list[str]:
    """The names a module's page documents: its ``__all__`` less the modules in it."""
    module = importlib.import_module(name)
    return [m for m in getattr(module, "__all__", ())
            if not inspect.ismodule(getattr(module, m, None))]


def target(name: str, member: str) -> str:
    """The path mkdocstrings renders ``name.member`` from (its definition, where it has one).

    A re-exported class or function is rendered from where it is defined, because a
    package's submodule may share its name (``stackvi.handlers.density`` is both the module
    and, at run time, the class it defines) and a static reader then sees the module. The
    path may lie outside stackvi (NumPyro's handlers, re-exported unchanged).
    """
    obj = getattr(importlib.import_module(name), member)
    where, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if where and qualname and (inspect.isclass(obj) or inspect.isfunction(obj)):
        return f"{where}.{qualname}"
    return f"{name}.{member}"


@functools.cache
def homes() -> dict[int, str]:
    """The one page that renders each public object (others link to it), keyed by ``id``.

    Its defining module's page when that module is public and lists it, else the page of
    the shallowest public module that exports it (first in reading order on a tie).
    """
    exporters: dict[int, list[str]] = {}
    defined: dict[int, str] = {}
    for name in public_modules():
        module = importlib.import_module(name)
        for member in members(name):
            obj = getattr(module, member)
            exporters.setdefault(id(obj), []).append(name)
            defined[id(obj)] = getattr(obj, "__module__", None) or ""
    return {key: defined[key] if defined[key] in names else min(names, key=lambda n: n.count("."))
            for key, names in exporters.items()}


def api_page(name: str) -> str:
    lines = [f"# `{name}`", "", f"::: {name}", "    options:", "      show_root_heading: false",
             "      members: false", ""]
    module = importlib.import_module(name)
    elsewhere, external = [], []
    for member in members(name):
        home = homes()[id(getattr(module, member))]
        path = target(home, member) if home != name else target(name, member)
        if not path.startswith("stackvi."):
            external.append(f"- `{member}`: `{path}`, re-exported unchanged")
        elif home != name:
            elsewhere.append(f"- [`{member}`][{path}] (documented in [`{home}`]({home}.md))")
        else:
            lines += [f"::: {path}", "    options:", "      show_root_full_path: false",
                      "      show_root_heading: true", ""]
    if elsewhere:
        lines += ["## Also exported here", "", *elsewhere, ""]
    if external:
        lines += ["## Re-exported from NumPyro", "", *external, ""]
    modules = [m for m in public_modules() if m.rsplit(".", 1)[0] == name and m != name]
    if modules:
        lines += ["Modules: " + ", ".join(f"[`{m}`]({m}.md)" for m in modules) + ".", ""]
    return "\n".join(lines)


def on_files(files, config):
    api = [f"api/{name}.md" for name in public_modules()]
    for path in api:
        files.append(File.generated(config, path, content=api_page(path[4:-3])))
    tutorials = sorted(f.src_uri for f in files
                       if f.src_uri.startswith("tutorials/") and f.src_uri.endswith(".ipynb"))
    config.nav = [
        {"Home": "index.md"},
        {"Tutorials": tutorials},
        {"Guides": [g for g in GUIDES if files.get_file_from_path(g)]},
        {"API reference": api},
    ]
    return files


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|const):`~?([^`]+)`")


class _DoctestFences(Preprocessor):
    """``>>>`` blocks (prompt, continuation and output lines up to a blank line) -> ```pycon.

    Also Sphinx roles, which some docstrings use (``:class:`density```), become code spans.
    """

    def run(self, lines: list[str]) -> list[str]:
        lines = [_ROLE.sub(r"`\1`", line) for line in lines]
        out: list[str] = []
        fence = None  # the fence that opened the code block we are in, if any
        block: list[str] = []
        indent = ""
        for line in [*lines, ""]:
            stripped = line.lstrip()
            if block:
                if stripped:
                    block.append(line[len(indent):] if line.startswith(indent) else stripped)
                    continue
                out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
                block = []
            if fence is None and stripped.startswith(">>>"):
                indent = line[: len(line) - len(stripped)]
                block = [stripped]
                continue
            marker = stripped[:3]
            if marker in ("```", "~~~"):
                fence = None if fence == marker else (fence or marker)
            out.append(line)
        return out[:-1]  # the sentinel blank line


class DoctestFences(Extension):
    def extendMarkdown(self, md) -> None:  # noqa: N802 (Python-Markdown's name)
        # Before the fenced-code preprocessors (priority 25), which then render the fence.
        md.preprocessors.register(_DoctestFences(md), "stackvi_doctest_fences", 40)


@event_priority(100)  # before mkdocstrings reads the Markdown extensions
def on_config(config):
    config.markdown_extensions.append(DoctestFences())
    # Material's Google Fonts would be fetched from the internet: use the system fonts.
    config.theme["font"] = False
    return config


def on_post_page(output, page, config):
    return _OFFSITE_SCRIPT.sub("", output)
