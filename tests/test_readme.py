"""The README's example must run as written and reach the exact posterior it promises."""

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_one_short_example():
    # The first block is the complete example; later ones (Scaling out) are
    # fragments that build on it and are exercised by tests/test_sharding.py.
    blocks = python_blocks()
    assert blocks
    assert len(blocks[0].strip().splitlines()) <= 22


def test_readme_example_runs_and_fits(capsys):
    namespace: dict = {"__name__": "readme"}
    exec(compile(python_blocks()[0], str(README), "exec"), namespace)
    params = namespace["result"].params
    # Exact posterior: p(b=1 | x) ≈ 1 and z | x, b=1 ~ N(Σ(x−4)/5, 1/5) = N(0.14, 0.447²).
    assert float(params["logit"]) > 3.0
    assert abs(float(params["m"]) - 0.14) < 0.15
    assert abs(float(params["s"]) - math.sqrt(0.2)) < 0.15
    assert "'m'" in capsys.readouterr().out


def test_readme_setup_commands():
    text = README.read_text()
    assert ("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/stackvi fit"
            in text)
    assert re.search(r"python3 -m venv \.venv && \.venv/bin/pip install -e '\.\[dev\]' && "
                     r"\.venv/bin/python -m pytest -q -n 2 -m \"not slow\"", text)
