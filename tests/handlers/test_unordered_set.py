"""The unordered set estimator: exact in expectation over all ordered draws, unbiased end to end."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from stackvi.handlers.unordered_set import set_coefficients
from tests.conftest import assert_lower_variance, assert_unbiased, per_key


@pytest.mark.parametrize("k", [2, 3, pytest.param(5, marks=pytest.mark.slow)])
def test_coefficients_exact_over_all_ordered_draws(k):
    """Σ over every ordered draw without replacement of P(draw) · estimate = the exact gradient."""
    theta = jnp.array([0.3, -1.2, 0.8, 0.0, 2.0])
    f = jnp.array([1.5, -0.7, 3.1, 0.2, -2.0])  # any cost: the identity is exact for every f
    exact = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * f))(theta)
    draws = jnp.array(list(itertools.permutations(range(5), k)))

    def expected(theta, idx):
        logp = jax.nn.log_softmax(theta)
        lp = logp[idx]
        used = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.exp(lp))[:-1]])
        prob = jnp.exp(jnp.sum(lp - jnp.log1p(-used)))  # the ordered draw's probability
        a = set_coefficients(logp, idx)
        jac = jax.jacobian(lambda t: jax.nn.log_softmax(t)[idx])(theta)  # (k, n)
        return prob, prob * jnp.einsum("jn,ji,i->n", jac, a, f[idx])

    probs, est = jax.jit(jax.vmap(expected, (None, 0)))(theta, draws)
    np.testing.assert_allclose(float(jnp.sum(probs)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jnp.sum(est, 0)), np.asarray(exact), atol=2e-5)


MU = jnp.array([-2.0, -0.5, 0.3, 1.1, 2.5])
X = jnp.array([0.7, 2.2])
PRIOR = jnp.array([0.1, 0.3, 0.2, 0.25, 0.15])


def model():
    c = numpyro.sample("c", dist.Categorical(probs=PRIOR))
    with numpyro.plate("i", 2):
        d = numpyro.sample("d", dist.Categorical(probs=jnp.ones(5) / 5))
        # nonlinear in both categories
        numpyro.sample("x", dist.Normal(MU[d] ** 2 * 0.5 + jnp.sin(MU[c]), 0.8), obs=X)


def guide():
    c = numpyro.sample("c", dist.Categorical(logits=numpyro.param("ac", jnp.zeros(5))))
    with numpyro.plate("i", 2):
        # d's logits depend on c: its log q is a cost of c, evaluated on each of c's k values
        logits = numpyro.param("ad", jnp.zeros((2, 5))) + 0.4 * MU * jnp.expand_dims(MU[c], -1)
        numpyro.sample("d", dist.Categorical(logits=logits))


PARAMS = {"ac": jnp.array([0.2, -0.4, 0.9, 0.0, -1.1]),
          "ad": jnp.array([[0.5, 0.0, -0.3, 1.0, 0.2], [-0.6, 0.4, 0.1, 0.0, 0.8]])}


def exact(params):
    """The ELBO summed over all 5³ values of (c, d0, d1), vectorized."""
    c, d0, d1 = (a.ravel() for a in jnp.meshgrid(*[jnp.arange(5)] * 3, indexing="ij"))
    d = jnp.stack([d0, d1], -1)  # (125, 2)
    lq_c = jax.nn.log_softmax(params["ac"])[c]
    logits_d = params["ad"] + 0.4 * MU * MU[c][:, None, None]  # (125, 2, 5)
    lq_d = jnp.take_along_axis(jax.nn.log_softmax(logits_d, -1), d[..., None], -1)[..., 0]
    lq = lq_c + jnp.sum(lq_d, -1)
    lp = (jnp.log(PRIOR[c]) + 2 * jnp.log(0.2)
          + jnp.sum(dist.Normal(MU[d] ** 2 * 0.5 + jnp.sin(MU[c])[:, None], 0.8).log_prob(X), -1))
    return jnp.sum(jnp.exp(lq) * (lp - lq))


@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.slow
def test_unordered_set_unbiased_against_enumeration(k):
    obj = estimators.elbo(model, handlers.unordered_set(guide, k=k))
    values, grads = per_key(obj, PARAMS, 4000)
    g = jax.grad(exact)(PARAMS)
    assert_unbiased(values, exact(PARAMS), "ELBO")
    assert_unbiased(grads["ac"], g["ac"], f"d/dac (k={k})")
    assert_unbiased(grads["ad"], g["ad"], f"d/dad (plate, k={k})")


def test_all_categories_is_enumeration():
    """k = all 3 categories at a site whose costs are deterministic given it: exact."""
    def m():
        c = numpyro.sample("c", dist.Categorical(probs=PRIOR[:3] / jnp.sum(PRIOR[:3])))
        numpyro.sample("x", dist.Normal(jnp.sin(MU[c]) * 2.0, 0.8), obs=0.4)

    def g():
        numpyro.sample("c", dist.Categorical(logits=numpyro.param("ac", jnp.zeros(3))))

    params = {"ac": PARAMS["ac"][:3]}
    _, got = jax.jit(estimators.elbo(m, handlers.unordered_set(g, k=3)).value_and_grad)(
        params, jax.random.PRNGKey(3))
    _, want = jax.jit(estimators.elbo(m, handlers.enumerate(g)).value_and_grad)(
        params, jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(got["ac"]), np.asarray(want["ac"]), atol=1e-5)


@pytest.mark.slow
def test_lower_variance_than_reinforce():
    _, us = per_key(estimators.elbo(model, handlers.unordered_set(guide, k=3)), PARAMS, 2000)
    _, rf = per_key(estimators.elbo(model, handlers.reinforce(guide)), PARAMS, 2000)
    for j in range(5):
        assert_lower_variance(us["ac"][:, j], rf["ac"][:, j], f"d/dac[{j}]")


def test_refusals():
    def g():
        numpyro.sample("c", dist.Bernoulli(0.3))

    obj = estimators.elbo(lambda: numpyro.sample("c", dist.Bernoulli(0.5)),
                          handlers.unordered_set(g, k=2))
    with pytest.raises(ValueError, match="'c'.*not a Categorical"):
        obj.estimate({}, jax.random.PRNGKey(0))
    obj = estimators.elbo(model, handlers.unordered_set(guide, k=1))
    with pytest.raises(ValueError, match="k=1.*2 ≤ k"):
        obj.estimate(PARAMS, jax.random.PRNGKey(0))
