"""Gradient estimators for discrete latents: step time and gradient variance, vs NumPyro.

Two models from :mod:`stackvi.models.mixtures`, each with one discrete
assignment ``z_n`` per data point and pathwise continuous latents:

* a mixture of 10 product-Bernoulli images on the 1,797 binarized sklearn
  digits (amortized linear encoder for ``z``),
* a 1-D Gaussian mixture (K = 3) on synthetic data.

Estimators of the ELBO gradient, all on the same model, guide and params:

* stackvi ``reinforce`` / ``mvd`` / ``enumerate`` on ``z`` (``reparam`` for
  the rest), and model-side enumeration (guide without ``z``, the assignment
  summed out of the model);
* NumPyro ``TraceGraph_ELBO`` (REINFORCE with plate Rao-Blackwellization, the
  same estimator as stackvi ``reinforce``) and ``TraceEnum_ELBO`` on
  ``config_enumerate(model)`` with the guide without ``z`` (the same estimator
  as stackvi's model-side enumeration).

Per estimator: the median time of one jitted ``value_and_grad`` step
(``block_until_ready``; fresh key each call), and the gradient variance: the
sum over the *encoder* parameters of ``z`` (where the strategies differ) of
the per-entry variance across R keys, or over the continuous latents' location
params for model-side enumeration (no encoder there; the same, unconstrained,
space in stackvi and NumPyro). "var × time" is the cost to reach a given
gradient accuracy. Ratios are against the NumPyro estimator of the same kind.

    python benchmarks/discrete.py [--quick] [--write-docs]

``--write-docs`` replaces the ``<!-- BEGIN discrete -->`` section of
docs/benchmarks.md (created if missing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer import TraceEnum_ELBO, TraceGraph_ELBO

from stackvi import estimators
from stackvi.handlers import enumerate as enum
from stackvi.handlers import mvd, reinforce
from stackvi.models import mixtures

SECTION = "discrete"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _median_time(step, params, repeats: int, calls: int = 20) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` back-to-back steps.

    Timing a loop (blocking once at its end) rather than single calls keeps
    Python dispatch jitter out of sub-millisecond steps.
    """
    jax.block_until_ready(step(params, jax.random.PRNGKey(0)))  # compile
    keys = [jax.random.PRNGKey(i + 1) for i in range(calls)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for key in keys:
            out = step(params, key)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def _variance(grad_of_key, names, num_keys: int) -> float:
    keys = jax.random.split(jax.random.PRNGKey(123), num_keys)
    grads = jax.jit(lambda ks: jax.lax.map(grad_of_key, ks))(keys)
    return float(sum(jnp.sum(jnp.var(grads[n], axis=0)) for n in names))


def measure(spec, x, repeats: int, num_keys: int) -> list[dict]:
    model, guide = spec.model, spec.guide

    def no_z(*a, **k):
        return guide(*a, with_z=False, **k)

    stackvi = {
        "stackvi reinforce": estimators.elbo(model, reinforce(guide, sites=["z"])),
        "stackvi mvd": estimators.elbo(model, mvd(guide, sites=["z"])),
        "stackvi enumerate": estimators.elbo(model, enum(guide, sites=["z"])),
        "stackvi model-side enumeration": estimators.elbo(model, no_z),
    }
    params = stackvi["stackvi reinforce"].init(jax.random.PRNGKey(0), x)
    params_no_z = stackvi["stackvi model-side enumeration"].init(jax.random.PRNGKey(0), x)
    rows = []
    for label, obj in stackvi.items():
        p = params_no_z if "model-side" in label else params
        names = list(spec.loc_params if "model-side" in label else spec.z_params)
        step = jax.jit(lambda p, k, obj=obj: obj.value_and_grad(p, k, x))
        rows.append({"estimator": label, "seconds": _median_time(step, p, repeats),
                     "variance": _variance(lambda k, obj=obj, p=p: obj.value_and_grad(p, k, x)[1],
                                           names, num_keys)})
        print(f"  {label:34s} {rows[-1]['seconds'] * 1e3:9.2f} ms  var {rows[-1]['variance']:.4g}",
              file=sys.stderr, flush=True)

    # NumPyro works in the constrained space; the encoder params are unconstrained
    # (real), so their gradients are comparable entry by entry.
    constrained = stackvi["stackvi reinforce"].constrain(params, x)
    constrained_no_z = stackvi["stackvi model-side enumeration"].constrain(params_no_z, x)
    numpyro_runs = {
        "NumPyro TraceGraph_ELBO": (TraceGraph_ELBO(), model, guide, constrained,
                                    list(spec.z_params)),
        "NumPyro TraceEnum_ELBO": (TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(model),
                                   no_z, constrained_no_z, list(spec.loc_params)),
    }
    for label, (loss, m, g, p, names) in numpyro_runs.items():
        def vg(p, k, loss=loss, m=m, g=g):
            return jax.value_and_grad(lambda q: -loss.loss(k, q, m, g, x))(p)

        step = jax.jit(vg)
        rows.append({"estimator": label, "seconds": _median_time(step, p, repeats),
                     "variance": _variance(lambda k, vg=vg, p=p: vg(p, k)[1], names, num_keys)})
        print(f"  {label:34s} {rows[-1]['seconds'] * 1e3:9.2f} ms  var {rows[-1]['variance']:.4g}",
              file=sys.stderr, flush=True)
    return rows


REFERENCE = {"stackvi reinforce": "NumPyro TraceGraph_ELBO",
             "stackvi model-side enumeration": "NumPyro TraceEnum_ELBO"}


def table(results: dict[str, list[dict]], repeats: int, num_keys: int) -> str:
    lines = [
        f"Median over {repeats} repeats of the mean of 20 back-to-back jitted steps; "
        f"gradient variance over {num_keys} keys (encoder "
        "params of z; location params of the continuous latents for model-side enumeration). "
        "Device: "
        f"{jax.devices()[0].device_kind}, {jax.__version__}.",
        "",
        "| model | estimator | step (ms) | grad variance | var × time | time ratio | var ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, rows in results.items():
        by = {r["estimator"]: r for r in rows}
        for r in rows:
            ref = by.get(REFERENCE.get(r["estimator"], ""))
            t_ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else ""
            v_ratio = (f"{r['variance'] / ref['variance']:.2f}"
                       if ref and ref["variance"] > 0 else "")
            lines.append(
                f"| {model} | {r['estimator']} | {r['seconds'] * 1e3:.2f} | {r['variance']:.3g} "
                f"| {r['variance'] * r['seconds']:.3g} | {t_ratio} | {v_ratio} |")
    lines += ["", "Ratios: stackvi reinforce vs NumPyro TraceGraph_ELBO (same estimator), "
              "stackvi model-side enumeration vs NumPyro TraceEnum_ELBO (same estimator). "
              "Enumeration is exact in z, so the variance left in its encoder gradient comes "
              "only from the pathwise continuous latents it is conditioned on."]
    return "\n".join(lines)


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (create it if missing)."""
    write_section(SECTION, "## Discrete latents: gradient estimators\n\n"
                  "Generated by `python benchmarks/discrete.py --write-docs`; see the script's "
                  "docstring for what is measured.\n\n" + text, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, few repeats and keys")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--keys", type=int, default=None, help="keys for the gradient variance")
    a = ap.parse_args(argv)
    repeats = a.repeats or (5 if a.quick else 30)
    num_keys = a.keys or (50 if a.quick else 400)
    data = {
        "Bernoulli mixture, digits": (mixtures.bernoulli_mixture,
                                      mixtures.digits(300 if a.quick else None)),
        "Gaussian mixture, 1-D": (mixtures.gmm, mixtures.gmm_data(200 if a.quick else 1000)),
    }
    results = {}
    for name, (spec, x) in data.items():
        print(f"{name} (N = {x.shape[0]})", file=sys.stderr)
        results[f"{name} (N = {x.shape[0]})"] = measure(spec, x, repeats, num_keys)
    text = table(results, repeats, num_keys)
    print(text)
    if a.write_docs:
        write_docs(text)
        print(f"wrote the '{SECTION}' section of {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
