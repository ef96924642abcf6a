"""Gallery benchmark: wall time of ``stackvi.fit`` vs NumPyro's ``SVI.run`` on every gallery model.

For each model of ``examples/`` (see ``examples/_gallery.py``) both fits
start from the same parameters (those of NumPyro's ``SVI.init(key)``, handed
to ``fit(init_params=...)``; ``SVI.run(key, ...)`` draws them again from the
same key), use the same optax optimizer and take the same
number of steps, one ELBO particle per step:

Each library runs in a fresh interpreter, twice there, on fresh objects each
time, and each call ends with ``block_until_ready`` on the final parameters:

* **cold** — the first call, as a script makes it: compilation and set-up
  included (``SVI.run`` runs its own ``SVI.init`` first, as ``fit`` runs its
  own), every eager operation compiled on the way;
* **warm** — the second call: the jitted loop is compiled again (new objects),
  eager operations come from JAX's cache;
* **per step** — the steady-state cost of one step, ``(T(2n) − T(n)) / n``
  from two warm times, so the compilation cancels out for both alike.

Each figure is the median over ``--repeats`` runs. The target is the total,
cold and warm, within 1.2× of ``SVI.run``.

    python benchmarks/gallery.py --quick            # a few models, few steps
    python benchmarks/gallery.py --write-docs       # all models into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
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
    """Seconds for one stackvi ``fit`` and one NumPyro ``SVI.run`` of ``steps`` steps each,
    each in a fresh interpreter (so neither finds the other's eager operations compiled);
    for the models of :data:`FUNSOR_REFERENCE`, also ``SVI.run`` with :class:`FunsorEnumELBO`."""
    out = {}
    libs = ["numpyro", "stackvi"] + (["funsor"] if entry.name in FUNSOR_REFERENCE else [])
    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init.pkl"
        for lib in libs:  # NumPyro's run saves the start
            cmd = [sys.executable, __file__, "--one", entry.name, lib, str(steps), str(seed),
                   str(init)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{entry.name} ({lib}) failed:\n{done.stderr[-3000:]}")
            cold, warm, elbo = json.loads(done.stdout.strip().splitlines()[-1])
            out[lib], out[f"warm_{lib}"], out[f"elbo_{lib}"] = cold, warm, elbo
    return out


#: Models whose NumPyro ``TraceEnum_ELBO`` is wrong (see the gallery notes): their second
#: row compares with ``SVI.run`` on :class:`FunsorEnumELBO`, a right NumPyro ELBO.
FUNSOR_REFERENCE = {"hmm_enum"}


class FunsorEnumELBO:
    """A one-particle ELBO for ``SVI`` whose model term is ``numpyro.contrib.funsor.log_density``
    on the enumerated model (NumPyro's MCMC path, which sums a ``scan``-enumerated state
    right): ``log q(z) − log Σ_x p(x, z, y)`` at a guide sample ``z``.

    NumPyro's density counts a masked (padded) enumerated step as ``log K`` where stackvi's
    counts 0 (``tests/examples/test_gallery.py::test_hmm_exact``): a constant, so the
    gradients are the same and the ELBO column differs by it.
    """

    can_infer_discrete = True  # SVI.init's check: the model's discrete sites are summed out

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        from numpyro.contrib.funsor import enum
        from numpyro.contrib.funsor import log_density as enum_log_density
        from numpyro.handlers import seed
        from numpyro.infer.util import log_density

        guide_lp, guide_tr = log_density(seed(guide, rng_key), args, kwargs, param_map)
        values = {n: s["value"] for n, s in guide_tr.items() if s["type"] == "sample"}
        model_lp, _ = enum_log_density(enum(model, -3), args, kwargs, {**param_map, **values})
        return guide_lp - model_lp


def _one(name: str, lib: str, steps: int, seed: int, init: Path) -> tuple:
    """Two timed calls in this (fresh) interpreter, on fresh objects each:
    ``(cold seconds, warm seconds, ELBO of the last 10%)``.

    *Cold* is a script's first call: every eager operation of the set-up is
    compiled on the way. *Warm* repeats it with a new objective/``SVI``: the jitted
    loop is compiled again, but eager operations come from JAX's cache. The NumPyro
    run, first, saves the unconstrained params ``SVI.init(key)`` starts from; the
    stackvi run starts ``fit`` from them (``init_params``)."""
    entry = _gallery.BY_NAME[name]
    ex = _gallery.load(name)
    args, kwargs = ex.data()
    key = jax.random.PRNGKey(seed)
    tail = max(1, steps // 10)
    if lib in ("numpyro", "funsor"):
        loss = _gallery.numpyro_loss(entry) if lib == "numpyro" else FunsorEnumELBO()

        def call():
            svi = SVI(ex.model, ex.guide, optax.adam(entry.lr), loss)
            t0 = time.perf_counter()  # as users call it: SVI.run runs SVI.init first
            out = svi.run(key, steps, *args, progress_bar=False, **kwargs)
            _block(out.params)
            return time.perf_counter() - t0, float(-out.losses[-tail:].mean()), svi
        cold, elbo, svi = call()
        warm, _, _ = call()
        if lib == "numpyro":
            state = svi.init(key, *args, **kwargs)  # the params run started from
            init.write_bytes(pickle.dumps(jax.device_get(svi.optim.get_params(
                state.optim_state))))
        return cold, warm, elbo
    raw0 = pickle.loads(init.read_bytes())

    def call():
        obj = sv.estimators.elbo(ex.model, ex.guide)  # fresh: fit compiles its loop anew
        t0 = time.perf_counter()
        res = sv.fit(obj, key, *args, optimizer=optax.adam(entry.lr), num_steps=steps,
                     init_params=raw0, progress=False, **kwargs)
        _block(res.raw_params)
        return time.perf_counter() - t0, float(res.history[-tail:].mean())
    cold, elbo = call()
    warm, _ = call()
    return cold, warm, elbo


def bench(entry, steps: int, repeats: int) -> list[dict]:
    """The model's row (and, for :data:`FUNSOR_REFERENCE`, its row against
    :class:`FunsorEnumELBO`)."""
    runs_n = [time_pair(entry, steps, seed=r) for r in range(repeats)]
    runs_2n = [time_pair(entry, 2 * steps, seed=r) for r in range(repeats)]

    def row(name, reference):
        out = {"name": name, "steps": steps}
        for lib, key in (("stackvi", "stackvi"), ("numpyro", reference)):
            out[f"{lib}_cold"] = statistics.median(r[key] for r in runs_n)
            out[f"{lib}_warm"] = statistics.median(r[f"warm_{key}"] for r in runs_n)
            out[f"{lib}_step"] = max(0.0, (statistics.median(r[f"warm_{key}"] for r in runs_2n)
                                           - out[f"{lib}_warm"]) / steps)
            out[f"{lib}_elbo"] = statistics.median(r[f"elbo_{key}"] for r in runs_n)
        return out

    rows = [row(entry.name, "numpyro")]
    if entry.name in FUNSOR_REFERENCE:
        rows.append(row(f"{entry.name} (SVI.run on FunsorEnumELBO)", "funsor"))
    return rows


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "—"


def table(rows: list[dict], steps: int, repeats: int) -> str:
    lines = [
        f"Wall time of `stackvi.fit` vs NumPyro's `SVI.run`, {steps} steps from the same initial "
        f"parameters, same `optax.adam`, one particle; medians of {repeats} repeats, each call "
        "in a fresh interpreter. *cold*: a script's first call, compilation and set-up "
        "included (every eager operation compiled on the way); *warm*: the same call again "
        "in that interpreter with fresh objects (the jitted loop compiled again, eager "
        "operations cached); *ms/step*: (T(2n) − T(n))/n of warm calls, compilation "
        "cancelled (a difference of two wall times: noisy for fast models). ELBO: mean of the "
        "last 10% of steps' estimates (a rough check that both fits went the same way; "
        "`tests/examples/test_gallery.py` compares them properly). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__} "
        f"on {jax.default_backend()}, load average {os.getloadavg()[0]:.1f} at the end. "
        "Produced by `python benchmarks/gallery.py --write-docs`.",
        "",
        "| model | cold: stackvi (s) | cold: SVI.run (s) | ratio | warm: stackvi (s) | "
        "warm: SVI.run (s) | ratio | stackvi ms/step | SVI ms/step | ELBO stackvi | "
        "ELBO SVI |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['stackvi_cold']:.2f} | {r['numpyro_cold']:.2f} | "
            f"{_ratio(r['stackvi_cold'], r['numpyro_cold'])} | {r['stackvi_warm']:.2f} | "
            f"{r['numpyro_warm']:.2f} | {_ratio(r['stackvi_warm'], r['numpyro_warm'])} | "
            f"{1e3 * r['stackvi_step']:.2f} | {1e3 * r['numpyro_step']:.2f} | "
            f"{r['stackvi_elbo']:.1f} | {r['numpyro_elbo']:.1f} |")
    notes = [f"* {e.name}: {e.note}" for e in _gallery.EXAMPLES
             if e.note and any(r["name"].split(" ")[0] == e.name for r in rows)]
    return "## Gallery: stackvi.fit vs SVI.run\n\n" + "\n".join(lines) + (
        "\n\n" + "\n".join(notes) if notes else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="example names (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK}, 100 steps, 1 repeat")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--one", nargs=5, metavar=("NAME", "LIB", "STEPS", "SEED", "INIT"),
                    help="(internal) time one call in this interpreter, print it as JSON")
    a = ap.parse_args(argv)
    if a.one:
        name, lib, steps, seed, init = a.one
        print(json.dumps(_one(name, lib, int(steps), int(seed), Path(init))))
        return
    names = QUICK if a.quick and not a.only else (a.only or [e.name for e in _gallery.EXAMPLES])
    steps, repeats = (100, 1) if a.quick else (a.steps, a.repeats)
    rows = []
    for name in names:
        for r in bench(_gallery.BY_NAME[name], steps, repeats):
            rows.append(r)
            print(f"{r['name']:20s} cold {r['stackvi_cold']:6.2f}s vs {r['numpyro_cold']:6.2f}s "
                  f"({_ratio(r['stackvi_cold'], r['numpyro_cold'])}x)  warm "
                  f"{r['stackvi_warm']:6.2f}s vs {r['numpyro_warm']:6.2f}s "
                  f"({_ratio(r['stackvi_warm'], r['numpyro_warm'])}x)  per step "
                  f"{1e3 * r['stackvi_step']:.2f} vs {1e3 * r['numpyro_step']:.2f} ms", flush=True)
    text = table(rows, steps, repeats)
    print(text)
    if a.write_docs:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
