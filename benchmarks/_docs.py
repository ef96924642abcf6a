"""Write a benchmark's own section of a docs page, leaving the other sections alone.

Each script owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``;
a missing section is appended.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
BENCHMARKS_MD = DOCS / "benchmarks.md"


def write_section(name: str, text: str, path: Path = BENCHMARKS_MD, title: str = "# Benchmarks"):
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    doc = path.read_text() if path.exists() else title + "\n"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)
