"""Helpers for the Pyro / GenJAX ports: strategy wrapping and the two kinds of checks.

Exact answers are computed by the callers (closed forms or brute force in plain
JAX); nothing here asks stackvi for an answer. ``exact_fn(constrained_params)``
returns the exact ELBO (the negated Pyro loss); ``unconstrained_grads`` turns it
into gradients with respect to the unconstrained params (the optimizer's space)
through NumPyro's own ``biject_to`` — the same space ``Objective.value_and_grad``
differentiates in.

Checks:

* :func:`check_exact` — every discrete guide site enumerated, no continuous
  guide site: the estimate is deterministic, compared with a float32 tolerance.
* :func:`check_unbiased` — a stochastic estimator: ``N`` fixed keys, value and
  each gradient z-tested with :func:`tests.conftest.assert_unbiased` (tolerance
  4·σ̂/√N from the samples themselves).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import log_density

from stackvi import estimators, handlers
from tests.conftest import assert_unbiased, per_key

# The strategies a discrete guide site can be given. "default" = no claim
# (REINFORCE without baseline for a non-reparameterizable site).
DISCRETE_STRATEGIES = ("default", "reinforce", "reinforce-ema", "reinforce-loo", "enumerate", "mvd")
EXACT_STRATEGIES = ("enumerate",)


def wrap(guide, strategy: str, sites):
    """``guide`` with ``strategy`` claimed for ``sites`` (``"default"``: unchanged)."""
    sites = sites if callable(sites) else list(sites)
    if strategy == "default":
        return guide
    if strategy == "reinforce":
        return handlers.reinforce(guide, sites=sites)
    if strategy == "reinforce-ema":
        return handlers.reinforce(guide, sites=sites, baseline="ema")
    if strategy == "reinforce-loo":
        return handlers.reinforce(guide, sites=sites, baseline="loo")
    if strategy == "enumerate":
        return handlers.enumerate(guide, sites=sites)
    if strategy == "mvd":
        return handlers.mvd(guide, sites=sites)
    raise ValueError(strategy)


def param_constraints(fn, *args) -> dict:
    """``{name: (constraint, constrained init value)}`` of every param site of ``fn``."""
    tr = numpyro.handlers.trace(numpyro.handlers.seed(fn, 0)).get_trace(*args)
    return {
        name: (site["kwargs"].get("constraint", numpyro.distributions.constraints.real),
               site["value"])
        for name, site in tr.items()
        if site["type"] == "param"
    }


def constrain(unconstrained: dict, cons: dict) -> dict:
    return {k: biject_to(cons[k][0])(v) for k, v in unconstrained.items()}


def unconstrain(constrained: dict, cons: dict) -> dict:
    return {k: biject_to(cons[k][0]).inv(jnp.asarray(v, jnp.float32))
            for k, v in constrained.items()}


def exact_value_and_grads(exact_fn, unconstrained: dict, cons: dict):
    """The exact ELBO and its gradient w.r.t. the unconstrained params."""
    return jax.value_and_grad(lambda u: exact_fn(constrain(u, cons)))(unconstrained)


def check_exact(obj, params, exact_value, exact_grads, *args, rtol=1e-5, atol=1e-5) -> None:
    value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(0), *args)
    np.testing.assert_allclose(float(value), float(exact_value), rtol=rtol, atol=atol,
                               err_msg="value")
    for k in exact_grads:
        np.testing.assert_allclose(np.asarray(grads[k]), np.asarray(exact_grads[k]),
                                   rtol=rtol, atol=atol, err_msg=f"grad {k}")


def check_unbiased(obj, params, exact_value, exact_grads, *args, n: int = 2000,
                   check_value: bool = True) -> None:
    values, grads = per_key(obj, params, n, *args)
    assert np.all(np.isfinite(np.asarray(values))), "non-finite value"
    if check_value:
        assert_unbiased(values, exact_value, "value")
    for k in exact_grads:
        g = np.asarray(grads[k])
        assert np.all(np.isfinite(g)), f"non-finite grad {k}"
        assert_unbiased(g, exact_grads[k], f"grad {k}")


def check_case(model, guide, strategy, sites, exact_fn, init, *args, num_particles=None,
               n=2000, check_value=True, rtol=1e-5, atol=1e-5, stochastic=None):
    """Build ``elbo(model, wrap(guide, strategy, sites))`` and compare with ``exact_fn``.

    ``init``: constrained param values to evaluate at. ``stochastic``: whether the
    estimator is random (default: unless ``strategy`` enumerates every site).
    """
    if stochastic is None:
        stochastic = strategy not in EXACT_STRATEGIES
    if num_particles is None:
        num_particles = 4 if strategy == "reinforce-loo" else (1 if not stochastic else 2)
    g = wrap(guide, strategy, sites)
    cons = {**param_constraints(guide, *args), **param_constraints(model, *args)}
    u = unconstrain(init, cons)
    exact_value, exact_grads = exact_value_and_grads(exact_fn, u, cons)
    obj = estimators.elbo(model, g, num_particles=num_particles)
    params = obj.init(jax.random.PRNGKey(1), *args)
    assert set(params) == set(u), (sorted(params), sorted(u))
    if stochastic:
        check_unbiased(obj, u, exact_value, exact_grads, *args, n=n, check_value=check_value)
    else:
        check_exact(obj, u, exact_value, exact_grads, *args, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- brute force


def discrete_latents(fn, params: dict, *args) -> dict:
    """``{name: (shape, support values)}`` of the unobserved sample sites of ``fn``."""
    with jax.ensure_compile_time_eval():  # supports are constants, also under jit
        tr = numpyro.handlers.trace(
            numpyro.handlers.seed(numpyro.handlers.substitute(fn, data=params), 0)
        ).get_trace(*args)
        out = {}
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"]:
                support = np.asarray(site["fn"].enumerate_support(expand=False)).reshape(-1)
                out[name] = (np.shape(site["value"]), support)
    return out


def all_configs(latents: dict) -> dict:
    """Every joint configuration of ``latents``: ``{name: array (C, *shape)}``."""
    names = list(latents)
    per_elem = []
    for name in names:
        shape, support = latents[name]
        per_elem += [support] * int(np.prod(shape, dtype=int))
    combos = np.array(list(itertools.product(*per_elem))) if per_elem else np.zeros((1, 0))
    out, i = {}, 0
    for name in names:
        shape, _ = latents[name]
        size = int(np.prod(shape, dtype=int))
        out[name] = jnp.asarray(combos[:, i:i + size].reshape((-1,) + tuple(shape)))
        i += size
    return out


def brute_force_elbo(model, guide, constrained: dict, *args, guide_sites=None, model_sites=None):
    """Σ_g q(g) [log Σ_m p(g, m) − log q(g)] over every configuration, plain NumPyro densities.

    Guide latents ``g`` are all discrete; model-only latents ``m`` (discrete) are
    summed inside the log. Scales and masks are whatever NumPyro's ``log_density``
    applies (so only use this with unscaled enumerated model-only groups).
    """
    g_lat = guide_sites or discrete_latents(guide, constrained, *args)
    m_all = model_sites or discrete_latents(model, constrained, *args)
    m_lat = {k: v for k, v in m_all.items() if k not in g_lat}
    g_cfg, m_cfg = all_configs(g_lat), all_configs(m_lat)

    def log_q(g):
        return log_density(guide, args, {}, {**constrained, **g})[0]

    def log_p(g, m):
        return log_density(model, args, {}, {**constrained, **g, **m})[0]

    def marginal(g):
        if not m_cfg:
            return log_p(g, {})
        return jax.nn.logsumexp(jax.vmap(lambda m: log_p(g, m))(m_cfg))

    if not g_cfg:
        return marginal({})
    lq = jax.vmap(log_q)(g_cfg)
    lp = jax.vmap(marginal)(g_cfg)
    return jnp.sum(jnp.exp(lq) * (lp - lq))
