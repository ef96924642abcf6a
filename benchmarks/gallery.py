"""Gallery benchmark: wall time of ``stackvi.fit`` vs NumPyro's ``SVI.run`` on every gallery model.

For each model of ``examples/`` (see ``examples/_gallery.py``) both fits
start from the same parameters (NumPyro's ``SVI.init``, handed to
``fit(init_params=...)``), use the same optax optimizer and take the same
number of steps, one ELBO particle per step:

* **total** — one whole call, compilation included, on fresh objects (a new
  objective and optimizer for stackvi, a new ``SVI`` for NumPyro, so neither
  reuses a compiled program), ending with ``block_until_ready`` on the final
  parameters;
* **per step** — the steady-state cost of one step, ``(T(2n) − T(n)) / n``
  from two such total times, so the compilation cancels out for both alike.

Each figure is the median over ``--repeats`` runs; the two libraries take
turns within every repeat. The issue's target is ``total`` within 1.2× of
``SVI.run``.

    python benchmarks/gallery.py --quick            # a few models, few steps
    python benchmarks/gallery.py --write-docs       # all models into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import optax
from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)
from numpyro.infer import SVI

import stackvi as sv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import _gallery  # noqa: E402

SECTION = "gallery"
QUICK = ["gmm", "gp", "ar2", "funnel"]


def _block(tree):
    jax.tree_util.tree_map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready")
                           else x, tree)


def time_pair(entry, steps: int, seed: int = 0) -> dict[str, float]:
    """Seconds for one stackvi ``fit`` and one NumPyro ``SVI.run`` of ``steps`` steps each."""
    ex = _gallery.load(entry.name)
    args, kwargs = ex.data()
    key = jax.random.PRNGKey(seed)
    svi = SVI(ex.model, ex.guide, optax.adam(entry.lr), _gallery.numpyro_loss(entry))
    state = svi.init(key, *args, **kwargs)
    raw0 = svi.optim.get_params(state.optim_state)
    _block(raw0)

    obj = sv.estimators.elbo(ex.model, ex.guide)  # fresh: fit compiles its loop anew
    t0 = time.perf_counter()
    res = sv.fit(obj, key, *args, optimizer=optax.adam(entry.lr), num_steps=steps,
                 init_params=raw0, progress=False, **kwargs)
    _block(res.raw_params)
    t_sv = time.perf_counter() - t0

    svi = SVI(ex.model, ex.guide, optax.adam(entry.lr), _gallery.numpyro_loss(entry))
    svi.init(key, *args, **kwargs)  # sets up the SVI object (untimed); the state is the one above
    t0 = time.perf_counter()
    out = svi.run(key, steps, *args, progress_bar=False,
                  init_state=state._replace(rng_key=key), **kwargs)  # run keeps the state's key
    _block(out.params)
    t_np = time.perf_counter() - t0
    return {"stackvi": t_sv, "numpyro": t_np,
            "elbo_stackvi": float(res.history[-max(1, steps // 10):].mean()),
            "elbo_numpyro": float(-out.losses[-max(1, steps // 10):].mean())}


def bench(entry, steps: int, repeats: int) -> dict:
    runs_n = [time_pair(entry, steps, seed=r) for r in range(repeats)]
    runs_2n = [time_pair(entry, 2 * steps, seed=r) for r in range(repeats)]
    out = {"name": entry.name, "steps": steps}
    for lib in ("stackvi", "numpyro"):
        out[f"{lib}_total"] = statistics.median(r[lib] for r in runs_n)
        out[f"{lib}_step"] = max(0.0, (statistics.median(r[lib] for r in runs_2n)
                                       - out[f"{lib}_total"]) / steps)
        out[f"{lib}_elbo"] = statistics.median(r[f"elbo_{lib}"] for r in runs_n)
    return out


def table(rows: list[dict], steps: int, repeats: int) -> str:
    lines = [
        f"Wall time of `stackvi.fit` vs NumPyro's `SVI.run`, {steps} steps from the same initial "
        f"parameters, same `optax.adam`, one particle; medians of {repeats} repeats. "
        "*total*: one call with compilation; *per step*: (T(2n) − T(n))/n, compilation "
        "cancelled. ELBO: mean of the last 10% of steps' estimates (a rough check that both "
        "fits went the same way; `tests/examples/test_gallery.py` compares them properly). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__} "
        f"on {jax.default_backend()}. Produced by `python benchmarks/gallery.py --write-docs`.",
        "",
        "| model | stackvi total (s) | SVI.run total (s) | ratio | stackvi ms/step | "
        "SVI ms/step | ratio | ELBO stackvi | ELBO SVI |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        step_ratio = (r["stackvi_step"] / r["numpyro_step"]) if r["numpyro_step"] > 0 else float(
            "nan")
        lines.append(
            f"| {r['name']} | {r['stackvi_total']:.2f} | {r['numpyro_total']:.2f} | "
            f"{r['stackvi_total'] / r['numpyro_total']:.2f} | {1e3 * r['stackvi_step']:.2f} | "
            f"{1e3 * r['numpyro_step']:.2f} | {step_ratio:.2f} | {r['stackvi_elbo']:.1f} | "
            f"{r['numpyro_elbo']:.1f} |")
    notes = [f"* {e.name}: {e.note}" for e in _gallery.EXAMPLES
             if e.note and any(r["name"] == e.name for r in rows)]
    return "## Gallery: stackvi.fit vs SVI.run\n\n" + "\n".join(lines) + (
        "\n\n" + "\n".join(notes) if notes else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="example names (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK}, 100 steps, 1 repeat")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    a = ap.parse_args(argv)
    names = QUICK if a.quick and not a.only else (a.only or [e.name for e in _gallery.EXAMPLES])
    steps, repeats = (100, 1) if a.quick else (a.steps, a.repeats)
    rows = []
    for name in names:
        rows.append(bench(_gallery.BY_NAME[name], steps, repeats))
        r = rows[-1]
        print(f"{name:20s} total {r['stackvi_total']:7.2f}s vs {r['numpyro_total']:7.2f}s "
              f"({r['stackvi_total'] / r['numpyro_total']:.2f}x)  per step "
              f"{1e3 * r['stackvi_step']:.2f} vs {1e3 * r['numpyro_step']:.2f} ms", flush=True)
    text = table(rows, steps, repeats)
    print(text)
    if a.write_docs:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
