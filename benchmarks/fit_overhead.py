"""Wall time of ``stackvi.fit`` against NumPyro's ``SVI.run``, compilation included.

Both fit the same model and guide with the same estimator (one-particle
ELBO), the same optax optimizer and the same number of steps, in one process,
taking turns (the order alternates between repeats); each timed call starts
from a fresh ``SVI`` object / a fresh objective, so each pays the compilation
of its step loop, as a user's first call does, and blocks on the result before
the clock is read. A first, untimed round of both compiles the small eager
programs they share (``random.split``, a Normal sample, ...): JAX caches those
per process, so without it whichever runs first pays them for both. Models:

* ``vae``: the stax VAE of :mod:`stackvi.models.vae` on the digits (batch 128),
* ``small``: a Normal–Normal model with a 3-parameter guide (the compile-bound case).

    python benchmarks/fit_overhead.py                 # both models, median of 3
    python benchmarks/fit_overhead.py --models small --repeats 1
    python benchmarks/fit_overhead.py --profile vae   # cProfile of one stackvi fit
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.distributions import constraints
from numpyro.infer import SVI, Trace_ELBO

import stackvi as sv
from stackvi.models import vae


def small_model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def small_guide(x):
    m = numpyro.param("m", 0.0)
    s = numpyro.param("s", 1.0, constraint=constraints.positive)
    numpyro.sample("z", dist.Normal(m, s))


def problems():
    (x,), kw = vae.digits_data(subsample_size=128)
    return {
        "vae": (vae.model, vae.guide, (x,), kw, 2000),
        "small": (small_model, small_guide, (jnp.linspace(-1.0, 3.0, 100),), {}, 2000),
    }


def run_stackvi(model, guide, args, kwargs, steps):
    obj = sv.estimators.elbo(model, guide)
    t0 = time.perf_counter()
    r = sv.fit(obj, jax.random.PRNGKey(0), *args, optimizer=optax.adam(1e-3),
               num_steps=steps, progress=False, **kwargs)
    jax.block_until_ready(r.raw_params)
    return time.perf_counter() - t0, float(r.history[-100:].mean())


def run_numpyro(model, guide, args, kwargs, steps):
    svi = SVI(model, guide, optax.adam(1e-3), Trace_ELBO())
    t0 = time.perf_counter()
    r = svi.run(jax.random.PRNGKey(0), steps, *args, progress_bar=False, **kwargs)
    jax.block_until_ready(r.params)
    return time.perf_counter() - t0, -float(r.losses[-100:].mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vae", "small"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--profile", default=None, help="cProfile one stackvi fit of this model")
    a = p.parse_args()
    probs = problems()
    if a.profile:
        import cProfile
        import pstats

        m, g, args, kw, steps = probs[a.profile]
        cProfile.runctx("run_stackvi(m, g, args, kw, steps)", globals(), locals(), "/tmp/fit.prof")
        pstats.Stats("/tmp/fit.prof").sort_stats("cumulative").print_stats(40)
        return
    print("| model | steps | stackvi.fit (s) | SVI.run (s) | ratio | stackvi ELBO | NumPyro ELBO |")
    print("|---|---|---|---|---|---|---|")
    for name in a.models:
        m, g, args, kw, steps = probs[name]
        steps = a.steps or steps
        run_stackvi(m, g, args, kw, 2)  # warm-up: the shared eager programs
        run_numpyro(m, g, args, kw, 2)
        ts, tn = [], []
        for r in range(a.repeats):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                if which == 0:
                    t, es = run_stackvi(m, g, args, kw, steps)
                    ts.append(t)
                else:
                    t, en = run_numpyro(m, g, args, kw, steps)
                    tn.append(t)
        s, n = statistics.median(ts), statistics.median(tn)
        print(f"| {name} | {steps} | {s:.2f} | {n:.2f} | {s / n:.2f} | {es:.1f} | {en:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
