"""Gumbel-softmax and straight-through: refused unless biased=True; bias measured vs enumeration.

The model and :func:`measure_bias` are shared with ``benchmarks/relaxed_bias.py``,
which writes the bias table of ``docs/strategies.md``.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from tests.conftest import assert_unbiased, per_key

X = jnp.array([1.4, -0.3])


def model():
    b = numpyro.sample("b", dist.Bernoulli(0.4))
    with numpyro.plate("i", 2):
        d = numpyro.sample("d", dist.Bernoulli(0.3))
        # an interaction b·d: the costs are not linear in the sites
        numpyro.sample("x", dist.Normal(2.0 * d * b + d - 0.5 * b, 0.7), obs=X)


def guide():
    b = numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("ab", 0.3)))
    with numpyro.plate("i", 2):
        numpyro.sample("d", dist.Bernoulli(logits=numpyro.param("a", jnp.array([0.4, -0.7]))
                                           + 0.5 * b))


PARAMS = {"ab": jnp.array(0.3), "a": jnp.array([0.4, -0.7])}


def _lq(logits, v):
    return v * logits - jax.nn.softplus(logits)


def exact(params):
    out = 0.0
    for b, d0, d1 in itertools.product([0.0, 1.0], repeat=3):
        d = jnp.array([d0, d1])
        lq = _lq(params["ab"], b) + jnp.sum(_lq(params["a"] + 0.5 * b, d))
        lp = (dist.Bernoulli(0.4).log_prob(b) + jnp.sum(dist.Bernoulli(0.3).log_prob(d))
              + jnp.sum(dist.Normal(2.0 * d * b + d - 0.5 * b, 0.7).log_prob(X)))
        out = out + jnp.exp(lq) * (lp - lq)
    return out


def measure_bias(strategy: str, temperature: float, n: int, seed: int = 0) -> dict:
    """Mean gradient over ``n`` keys minus the exact one, with its standard error, per param."""
    wrap = getattr(handlers, strategy)(guide, temperature=temperature, biased=True)
    values, grads = per_key(estimators.elbo(model, wrap), PARAMS, n, seed=seed)
    g = jax.grad(exact)(PARAMS)
    out = {"value": (float(np.mean(values) - exact(PARAMS)),
                     float(np.std(values, ddof=1) / math.sqrt(n)))}
    for name in PARAMS:
        x = np.asarray(grads[name], np.float64).reshape(n, -1)
        want = np.asarray(g[name]).ravel()
        out[name] = (np.mean(x, 0) - want, np.std(x, 0, ddof=1) / math.sqrt(n), want)
    return out


@pytest.mark.parametrize("strategy", ["gumbel_softmax", "straight_through"])
def test_refused_unless_biased(strategy):
    obj = estimators.elbo(model, getattr(handlers, strategy)(guide))
    with pytest.raises(ValueError, match="'b'.*BIASED.*biased=True"):
        obj.estimate(PARAMS, jax.random.PRNGKey(0))
    cfg = handlers.configure(guide, lambda site: (strategy, {"temperature": 0.5}))
    with pytest.raises(ValueError, match="BIASED"):
        estimators.elbo(model, cfg).estimate(PARAMS, jax.random.PRNGKey(0))


def test_refuses_categorical():
    def g():
        numpyro.sample("c", dist.Categorical(logits=jnp.zeros(3)))

    obj = estimators.elbo(lambda: numpyro.sample("c", dist.Categorical(logits=jnp.zeros(3))),
                          handlers.gumbel_softmax(g, biased=True))
    with pytest.raises(ValueError, match="'c'.*not a Bernoulli"):
        obj.estimate({}, jax.random.PRNGKey(0))


@pytest.mark.slow
def test_straight_through_value_unbiased_gradient_biased():
    """The value is the hard sample's (unbiased); the gradient's bias is real, and measured."""
    wrap = handlers.straight_through(guide, temperature=0.5, biased=True)
    values, grads = per_key(estimators.elbo(model, wrap), PARAMS, 8000)
    assert_unbiased(values, exact(PARAMS), "straight-through ELBO value")
    g = jax.grad(exact)(PARAMS)
    x = np.asarray(grads["a"], np.float64)
    z = np.abs(x.mean(0) - np.asarray(g["a"])) / (x.std(0, ddof=1) / math.sqrt(len(x)))
    assert np.max(z) > 8, f"straight-through gradient bias not detected: z = {z}"


def test_gumbel_softmax_configure_with_biased():
    """configure/strategies can claim it with biased=True; the relaxed value is in (0, 1)."""
    cfg = handlers.configure(
        guide, lambda site: ("gumbel_softmax", {"biased": True, "temperature": 1.0}))
    tr = handlers.trace(handlers.seed(cfg, 0)).get_trace()
    handlers.simulate(handlers.seed(cfg, 0))
    assert tr["b"]["infer"]["strategy"] == "gumbel_softmax"
    tr = handlers.simulate(handlers.seed(cfg, 1))
    b = np.asarray(tr["b"]["value"])
    assert 0 < b < 1 and b not in (0.0, 1.0)
