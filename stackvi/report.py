"""Reports of a fit: a summary of the objective's history and a loss-curve PNG.

Used by ``stackvi fit``; handy after :func:`stackvi.fit` too.

>>> import numpy as np
>>> s = summarize(np.linspace(-10.0, -1.0, 1000), wall=2.0)
>>> s["steps"], round(s["final"], 2), s["window"]
(1000, -1.45, 100)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["summarize", "plot_history", "format_summary", "describe_params"]


def _window(n: int) -> int:
    """How many final steps the summary averages over: the last 10%, 1..200 steps."""
    return max(1, min(200, n // 10))


def summarize(history, wall: float, steps_run: int | None = None) -> dict:
    """Mean and spread of the objective over the last steps, the first steps, and speed.

    ``steps_run``: how many of the steps took ``wall`` seconds (fewer than
    ``len(history)`` for a resumed run; default all).
    """
    import numpy as np

    h = np.asarray(history, dtype=np.float64)
    tail = h[-_window(len(h)):]
    run = len(h) if steps_run is None else steps_run
    return {"steps": len(h), "final": float(tail.mean()), "final_sd": float(tail.std()),
            "window": len(tail), "first": float(h[:_window(len(h))].mean()),
            "wall_s": wall, "steps_run": run, "steps_per_s": run / wall if wall > 0 else None}


def plot_history(history, name: str, path: Path) -> None:
    """The objective per step (light) and its running mean (dark), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h = np.asarray(history, dtype=np.float64)
    w = max(1, len(h) // 50)
    smooth = np.convolve(h, np.ones(w) / w, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(h)), h, color="tab:blue", alpha=0.25, lw=0.5, label="per step")
    ax.plot(np.arange(w - 1, len(h)), smooth, color="tab:blue", lw=1.5,
            label=f"mean of {w} steps")
    lo, hi = np.percentile(h, [2, 100])  # the first steps are far below: keep them off-scale
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{name} (higher is better)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe_params(params: dict, max_values: int = 8) -> dict:
    """Fitted (constrained) params for a summary: small ones as numbers, big ones as their
    shape and spread; a module's params (a dict of arrays) as its array and number counts.

    >>> import numpy as np
    >>> describe_params({"m": np.float32(1.5), "w": np.arange(20.0)})
    {'m': 1.5, 'w': 'shape (20,): mean 9.5, sd 5.77, min 0, max 19'}
    """
    import numpy as np

    out: dict = {}
    for name, value in params.items():
        if isinstance(value, (dict, list, tuple)):
            import jax

            leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(value)]
            out[name] = (f"{len(leaves)} arrays, {sum(x.size for x in leaves):,} numbers")
            continue
        x = np.asarray(value, dtype=np.float64)
        if x.size <= max_values:
            out[name] = round(float(x), 6) if x.ndim == 0 else [round(float(v), 6)
                                                                for v in x.ravel()]
        else:
            out[name] = (f"shape {x.shape}: mean {x.mean():.4g}, sd {x.std():.3g}, "
                         f"min {x.min():.4g}, max {x.max():.4g}")
    return out


def format_summary(s: dict, name: str, files: Sequence[Path]) -> str:
    """The summary printed at the end of ``stackvi fit``."""
    lines = [
        f"{name}: {s['final']:.6g} ± {s['final_sd']:.3g} (mean ± sd of the last {s['window']} "
        f"steps; first {s['window']}: {s['first']:.6g})",
    ]
    if "held_out_per_image" in s:
        lines.append(f"{name} per image: train {s['final'] / s['train_images']:.4g} nats, "
                     f"held-out {s['held_out_per_image']:.4g} nats "
                     f"({s['train_images']} training digits)")
    run = s.get("steps_run", s["steps"])
    lines.append(f"time: {s['wall_s']:.1f} s for {run} steps "
                 + (f"(resumed at step {s['steps'] - run}) " if run != s["steps"] else "")
                 + f"({s['steps_per_s'] or 0:.0f} steps/s, compilation included)")
    if s.get("params"):
        lines.append("params (constrained): " + ", ".join(
            f"{k} = {v}" for k, v in s["params"].items()))
    lines.append("wrote: " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
