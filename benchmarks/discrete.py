"""Gradient estimators for discrete and Dirichlet latents: step time, gradient variance, vs NumPyro.

Four models, each with one latent per data point whose strategy is varied and
pathwise continuous latents:

* a mixture of 10 product-Bernoulli images on the 1,797 binarized sklearn
  digits (Categorical assignment ``z``, amortized linear encoder),
* a 1-D Gaussian mixture (K = 3) on synthetic data (Categorical ``z``),
* a two-template Bernoulli model on the digits with a *Bernoulli* switch
  ``b`` per image (amortized linear encoder; the model uses ``b``
  arithmetically, so the relaxations apply),
* an admixture of 10 pixel templates on the digits with *Dirichlet* weights
  ``π`` per image (``x_n ~ Bernoulli(π_n · σ(θ))``; amortized encoder
  ``α_n = exp(x_n W + c)``), a continuous site that NumPyro reparameterizes
  implicitly and that ``mvd`` handles by its Beta/Dirichlet decomposition.

Estimators of the ELBO gradient, all on the same model, guide and params —
every stackvi strategy that applies to the site:

* Categorical ``z``: ``reinforce``, ``mvd``, ``enumerate``, ``unordered_set``
  (k = 2 and 3), ``arsm`` (C(C − 1)/2 forward re-runs: 45 for the digits'
  10 components, 3 for the GMM) and model-side enumeration (guide without ``z``);
* Bernoulli ``b``: ``reinforce``, ``mvd``, ``enumerate``, ``disarm``, ``arm``,
  ``relax`` and ``rebar`` (their control variates — relax's network, rebar's
  ``η`` and temperature — first trained on the gradient's variance for
  ``WARMUP`` Adam steps at the fixed model and guide params, the warm-up not
  timed), model-side enumeration, and the *biased* ``gumbel_softmax`` /
  ``straight_through`` (τ = 0.5), whose rows also give their bias: the
  distance of their mean gradient from enumerate's (an unbiased estimate of
  the exact gradient whose own noise comes only from the continuous
  latents), relative to its norm;
* Dirichlet ``π``: ``reparam`` (implicit reparameterization, NumPyro's
  default for Dirichlet), ``mvd`` (1 + K forward re-runs) and ``reinforce``;
* NumPyro: ``TraceGraph_ELBO`` (REINFORCE with plate Rao-Blackwellization, the
  same estimator as stackvi ``reinforce``) and ``TraceEnum_ELBO`` on
  ``config_enumerate(model)`` with the guide without the discrete site (the
  same estimator as stackvi's model-side enumeration) for the discrete
  models; ``Trace_ELBO`` (the same estimator as stackvi ``reparam``) for the
  Dirichlet one.

Per estimator: the median time of one jitted ``value_and_grad`` step
(``block_until_ready``; fresh key each call), and the gradient variance: the
sum over the *encoder* parameters of the varied site (where the strategies
differ) of the per-entry variance across R keys, or over the continuous
latents' location params for model-side enumeration (no encoder there; the
same, unconstrained, space in stackvi and NumPyro). "var × time" is the cost
to reach a given gradient accuracy. Ratios are against the NumPyro estimator
of the same kind. The table states the run's mode and the machine's load
average, since step times on a loaded machine are not comparable.

    python benchmarks/discrete.py [--quick] [--write-docs] [--only NAME]

``--write-docs`` replaces the ``<!-- BEGIN discrete -->`` section of
docs/benchmarks.md (created if missing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)
from numpyro.contrib.funsor import config_enumerate
from numpyro.distributions import constraints
from numpyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

from stackvi import estimators
from stackvi import handlers as h
from stackvi.models import mixtures

SECTION = "discrete"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _switch_model(x):
    n, d = x.shape
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([2, d]).to_event(2))
    with numpyro.plate("data", n):
        b = numpyro.sample("z", dist.Bernoulli(0.5))
        # b used arithmetically: template 0 or 1 (relaxed values interpolate)
        logits = theta[0] + jnp.expand_dims(b, -1) * (theta[1] - theta[0])
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def _switch_guide(x, with_z: bool = True):
    n, d = x.shape
    m = numpyro.param("theta_loc", jnp.zeros((2, d)))
    s = numpyro.param("theta_scale", 0.1 * jnp.ones((2, d)), constraint=constraints.positive)
    numpyro.sample("theta", dist.Normal(m, s).to_event(2))
    if with_z:
        w = numpyro.param("W", jnp.zeros(d))
        c = numpyro.param("c", jnp.zeros(()))
        with numpyro.plate("data", n):
            numpyro.sample("z", dist.Bernoulli(logits=x @ w + c))


switch = SimpleNamespace(model=_switch_model, guide=_switch_guide, z_params=("W", "c"),
                         loc_params=("theta_loc",))

K_ADMIX = 10


def _admixture_model(x, k: int = K_ADMIX):
    n, d = x.shape
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([k, d]).to_event(2))
    with numpyro.plate("data", n):
        pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(k)))
        # every image a convex combination of the k templates' pixel probabilities
        numpyro.sample("x", dist.Bernoulli(probs=pi @ jax.nn.sigmoid(theta)).to_event(1), obs=x)


def _admixture_guide(x, k: int = K_ADMIX):
    n, d = x.shape
    m = numpyro.param("theta_loc", jnp.zeros((k, d)))
    s = numpyro.param("theta_scale", 0.1 * jnp.ones((k, d)), constraint=constraints.positive)
    numpyro.sample("theta", dist.Normal(m, s).to_event(2))
    w = numpyro.param("W", jnp.zeros((d, k)))
    c = numpyro.param("c", jnp.zeros(k))
    with numpyro.plate("data", n):
        numpyro.sample("pi", dist.Dirichlet(jnp.exp(x @ w + c)))


admixture = SimpleNamespace(model=_admixture_model, guide=_admixture_guide, z_params=("W", "c"),
                            loc_params=("theta_loc",))

CATEGORICAL = {
    "stackvi reinforce": lambda g: h.reinforce(g, sites=["z"]),
    "stackvi mvd": lambda g: h.mvd(g, sites=["z"]),
    "stackvi enumerate": lambda g: h.enumerate(g, sites=["z"]),
    "stackvi unordered_set k=2": lambda g: h.unordered_set(g, sites=["z"], k=2),
    "stackvi unordered_set k=3": lambda g: h.unordered_set(g, sites=["z"], k=3),
    "stackvi arsm": lambda g: h.arsm(g, sites=["z"]),
}
BERNOULLI = {
    "stackvi reinforce": lambda g: h.reinforce(g, sites=["z"]),
    "stackvi mvd": lambda g: h.mvd(g, sites=["z"]),
    "stackvi enumerate": lambda g: h.enumerate(g, sites=["z"]),
    "stackvi disarm": lambda g: h.disarm(g, sites=["z"]),
    "stackvi arm": lambda g: h.arm(g, sites=["z"]),
    "stackvi relax": lambda g: h.relax(g, sites=["z"]),
    "stackvi rebar": lambda g: h.rebar(g, sites=["z"]),
    "stackvi gumbel_softmax τ=0.5 (biased)":
        lambda g: h.gumbel_softmax(g, sites=["z"], temperature=0.5, biased=True),
    "stackvi straight_through τ=0.5 (biased)":
        lambda g: h.straight_through(g, sites=["z"], temperature=0.5, biased=True),
}
DIRICHLET = {
    "stackvi reparam": lambda g: h.reparam(g, sites=["pi"]),
    "stackvi mvd": lambda g: h.mvd(g, sites=["pi"]),
    "stackvi reinforce": lambda g: h.reinforce(g, sites=["pi"]),
}

WARMUP = 300
TRAINED = ("relax:", "rebar:")  # the prefixes of params trained on the gradient's variance


def _warmed_up(obj, params, x, steps: int = WARMUP, lr: float = 0.01) -> dict:
    """``params`` plus relax's or rebar's control-variate params, trained on the variance
    alone (Adam) at the fixed model and guide params."""
    import optax

    params = {**obj.init(jax.random.PRNGKey(0), x), **params}
    phi = sorted(k for k in params if k.startswith(TRAINED))
    opt = optax.adam(lr)

    def step(carry, key):
        p, s = carry
        g = obj.value_and_grad(p, key, x)[1]  # φ's entries: −∇‖ĝ‖²
        upd, s = opt.update({k: -g[k] for k in phi}, s)
        return ({**p, **optax.apply_updates({k: p[k] for k in phi}, upd)}, s), None

    keys = jax.random.split(jax.random.PRNGKey(99), steps)
    init = (params, opt.init({k: params[k] for k in phi}))
    return jax.jit(lambda c: jax.lax.scan(step, c, keys)[0][0])(init)


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


def _grads(grad_of_key, names, num_keys: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(123), num_keys)
    grads = jax.jit(lambda ks: jax.lax.map(grad_of_key, ks))(keys)
    return {n: np.asarray(grads[n]) for n in names}


def _variance(grads: dict) -> float:
    return float(sum(np.sum(np.var(g, axis=0)) for g in grads.values()))


def _relative_bias(grads: dict, reference: dict) -> float:
    """‖mean − mean_ref‖ / ‖mean_ref‖ over the encoder params (reference: enumerate)."""
    diff = sum(np.sum((g.mean(0) - reference[n].mean(0)) ** 2) for n, g in grads.items())
    norm = sum(np.sum(reference[n].mean(0) ** 2) for n in grads)
    return float(np.sqrt(diff / norm))


def measure(spec, x, repeats: int, num_keys: int, strategies: dict,
            discrete: bool = True) -> list[dict]:
    """One row per estimator; ``discrete``: the varied site is discrete (model-side
    enumeration and NumPyro's TraceGraph/TraceEnum rows), else NumPyro's Trace_ELBO row."""
    model, guide = spec.model, spec.guide

    def no_z(*a, **k):
        return guide(*a, with_z=False, **k)

    stackvi = {label: estimators.elbo(model, wrap(guide)) for label, wrap in strategies.items()}
    if discrete:
        stackvi["stackvi model-side enumeration"] = estimators.elbo(model, no_z)
        params_no_z = stackvi["stackvi model-side enumeration"].init(jax.random.PRNGKey(0), x)
    params = stackvi["stackvi reinforce"].init(jax.random.PRNGKey(0), x)
    rows, enum_grads = [], None
    for label, obj in stackvi.items():
        p = params_no_z if "model-side" in label else params
        if label in ("stackvi relax", "stackvi rebar"):
            p = _warmed_up(obj, p, x)
        names = list(spec.loc_params if "model-side" in label else spec.z_params)
        step = jax.jit(lambda p, k, obj=obj: obj.value_and_grad(p, k, x))
        grads = _grads(lambda k, obj=obj, p=p: obj.value_and_grad(p, k, x)[1], names, num_keys)
        row = {"estimator": label, "seconds": _median_time(step, p, repeats),
               "variance": _variance(grads)}
        if label == "stackvi enumerate":
            enum_grads = grads
        if "biased" in label and enum_grads is not None:
            row["bias"] = _relative_bias(grads, enum_grads)
        rows.append(row)
        print(f"  {label:40s} {row['seconds'] * 1e3:9.2f} ms  var {row['variance']:.4g}"
              + (f"  rel. bias {row['bias']:.3f}" if "bias" in row else ""),
              file=sys.stderr, flush=True)

    # NumPyro works in the constrained space; the encoder params are unconstrained
    # (real), so their gradients are comparable entry by entry.
    constrained = stackvi["stackvi reinforce"].constrain(params, x)
    if discrete:
        constrained_no_z = stackvi["stackvi model-side enumeration"].constrain(params_no_z, x)
        numpyro_runs = {
            "NumPyro TraceGraph_ELBO": (TraceGraph_ELBO(), model, guide, constrained,
                                        list(spec.z_params)),
            "NumPyro TraceEnum_ELBO": (TraceEnum_ELBO(max_plate_nesting=1),
                                       config_enumerate(model), no_z, constrained_no_z,
                                       list(spec.loc_params)),
        }
    else:
        numpyro_runs = {"NumPyro Trace_ELBO": (Trace_ELBO(), model, guide, constrained,
                                               list(spec.z_params))}
    for label, (loss, m, g, p, names) in numpyro_runs.items():
        def vg(p, k, loss=loss, m=m, g=g):
            return jax.value_and_grad(lambda q: -loss.loss(k, q, m, g, x))(p)

        step = jax.jit(vg)
        rows.append({"estimator": label, "seconds": _median_time(step, p, repeats),
                     "variance": _variance(_grads(lambda k, vg=vg, p=p: vg(p, k)[1], names,
                                                  num_keys))})
        print(f"  {label:40s} {rows[-1]['seconds'] * 1e3:9.2f} ms  var {rows[-1]['variance']:.4g}",
              file=sys.stderr, flush=True)
    return rows


REFERENCE = {"stackvi reinforce": "NumPyro TraceGraph_ELBO",
             "stackvi model-side enumeration": "NumPyro TraceEnum_ELBO",
             "stackvi reparam": "NumPyro Trace_ELBO"}


def table(results: dict[str, list[dict]], repeats: int, num_keys: int, run: str = "") -> str:
    lines = [
        f"{run}Median over {repeats} repeats of the mean of 20 back-to-back jitted steps; "
        f"gradient variance over {num_keys} keys (encoder "
        "params of the varied site; location params of the continuous latents for model-side "
        "enumeration). Device: "
        f"{jax.devices()[0].device_kind}, {jax.__version__}.",
        "",
        "| model | estimator | step (ms) | grad variance | var × time | time ratio | var ratio "
        "| rel. bias |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, rows in results.items():
        by = {r["estimator"]: r for r in rows}
        for r in rows:
            ref = by.get(REFERENCE.get(r["estimator"], ""))
            t_ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else ""
            v_ratio = (f"{r['variance'] / ref['variance']:.2f}"
                       if ref and ref["variance"] > 0 else "")
            bias = f"{r['bias']:.3f}" if "bias" in r else ""
            lines.append(
                f"| {model} | {r['estimator']} | {r['seconds'] * 1e3:.2f} | {r['variance']:.3g} "
                f"| {r['variance'] * r['seconds']:.3g} | {t_ratio} | {v_ratio} | {bias} |")
    lines += ["", "Ratios: stackvi reinforce vs NumPyro TraceGraph_ELBO (same estimator), "
              "stackvi model-side enumeration vs NumPyro TraceEnum_ELBO (same estimator), "
              "stackvi reparam vs NumPyro Trace_ELBO (same estimator: implicit "
              "reparameterization of the Dirichlet). relax and rebar are timed and measured "
              f"after {WARMUP} untimed Adam steps training their control variates on the "
              "gradient's variance. "
              "Enumeration is exact in z, so the variance left in its encoder gradient comes "
              "only from the pathwise continuous latents it is conditioned on. Rel. bias (biased "
              "strategies only): ‖mean gradient − enumerate's mean gradient‖ / ‖enumerate's‖ over "
              "the encoder params, at the same keys; it includes the sampling error of both "
              "means, so small values are not resolved.",
              "",
              "Storchastic (van Krieken, Tomczak & ten Teije, NeurIPS 2021) offers most of these "
              "estimators in PyTorch, but its paper publishes no gradient-variance or step-time "
              "table on these models (its experiments are a discrete VAE on MNIST), so there are "
              "no published numbers to set beside these; none are quoted."]
    return "\n".join(lines)


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (create it if missing)."""
    write_section(SECTION, "## Discrete and Dirichlet latents: gradient estimators\n\n"
                  "Generated by `python benchmarks/discrete.py --write-docs`; see the script's "
                  "docstring for what is measured.\n\n" + text, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, few repeats and keys")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--keys", type=int, default=None, help="keys for the gradient variance")
    ap.add_argument("--only", default=None, help="run only the models whose name contains this")
    a = ap.parse_args(argv)
    repeats = a.repeats or (5 if a.quick else 30)
    num_keys = a.keys or (50 if a.quick else 400)
    digits = mixtures.digits(300 if a.quick else None)
    data = {  # name: (spec, data, strategies, whether the varied site is discrete)
        "Bernoulli mixture, digits": (mixtures.bernoulli_mixture, digits, CATEGORICAL, True),
        "Gaussian mixture, 1-D": (mixtures.gmm, mixtures.gmm_data(200 if a.quick else 1000),
                                  CATEGORICAL, True),
        "Bernoulli switch, digits": (switch, digits, BERNOULLI, True),
        "Dirichlet admixture, digits": (admixture, digits, DIRICHLET, False),
    }
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    results = {}
    for name, (spec, x, strategies, discrete) in data.items():
        if a.only and a.only not in name:
            continue
        print(f"{name} (N = {x.shape[0]})", file=sys.stderr)
        results[f"{name} (N = {x.shape[0]})"] = measure(spec, x, repeats, num_keys, strategies,
                                                         discrete)
    load.append(os.getloadavg()[0])
    command = "python benchmarks/discrete.py" + "".join(f" {w}" for w in (argv or sys.argv[1:])
                                                         if w != "--write-docs")
    run = (f"Run: `{command}` ({'quick: N = 300 digits, 200 GMM points' if a.quick else 'full'}"
           f"), {time.perf_counter() - t0:.0f} s, {os.cpu_count()} CPUs, 1-minute load average "
           f"{load[0]:.1f} at the start and {load[1]:.1f} at the end. ")
    text = table(results, repeats, num_keys, run)
    print(text)
    if a.write_docs:
        write_docs(text)
        print(f"wrote the '{SECTION}' section of {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
