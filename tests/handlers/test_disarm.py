"""DisARM (a strategy written on the public extension API) against exact enumeration."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from tests.conftest import assert_lower_variance, assert_unbiased, per_key

X = jnp.array([1.2, 2.1])


def model():
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    c = numpyro.sample("c", dist.Bernoulli(0.4))
    with numpyro.plate("i", 2):
        d = numpyro.sample("d", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(d + c + 0.5 * b, 1.0), obs=X)


def guide():
    b = numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("ab", 0.0)))  # logits at 0
    # c depends on b: dependent sites under one strategy
    numpyro.sample("c", dist.Bernoulli(logits=numpyro.param("ac", -0.3) + b))
    with numpyro.plate("i", 2):
        numpyro.sample("d", dist.Bernoulli(logits=numpyro.param("a", jnp.array([0.4, -0.7]))))


def _lq(logits, v):
    # log Bernoulli(v; σ(logits)) written out: NumPyro's own form has a wrong gradient at 0
    return v * logits - jax.nn.softplus(logits)


def exact(ab, ac, a):
    out = 0.0
    for b, c, d0, d1 in itertools.product([0.0, 1.0], repeat=4):
        d = jnp.array([d0, d1])
        lq = _lq(ab, b) + _lq(ac + b, c) + jnp.sum(_lq(a, d))
        lp = (jnp.log(0.5) + dist.Bernoulli(0.4).log_prob(c)
              + jnp.sum(dist.Bernoulli(0.3).log_prob(d))
              + jnp.sum(dist.Normal(d + c + 0.5 * b, 1.0).log_prob(X)))
        out = out + jnp.exp(lq) * (lp - lq)
    return out


PARAMS = {"ab": jnp.array(0.0), "ac": jnp.array(-0.3), "a": jnp.array([0.4, -0.7])}


@pytest.mark.parametrize("strategy", ["disarm", "arm"])
@pytest.mark.slow
def test_disarm_unbiased_against_enumeration(strategy):
    obj = estimators.elbo(model, getattr(handlers, strategy)(guide))
    values, grads = per_key(obj, PARAMS, 20000)
    args = (PARAMS["ab"], PARAMS["ac"], PARAMS["a"])
    gb, gc, ga = jax.grad(exact, argnums=(0, 1, 2))(*args)
    assert_unbiased(values, exact(*args), "ELBO")
    assert_unbiased(grads["ab"], gb, "d/dab (logits at zero)")
    assert_unbiased(grads["ac"], gc, "d/dac")
    assert_unbiased(grads["a"], ga, "d/da (plate)")


def test_disarm_lower_variance_than_reinforce():
    var = {}
    for name, wrap in [("disarm", handlers.disarm), ("reinforce", handlers.reinforce)]:
        _, grads = per_key(estimators.elbo(model, wrap(guide)), PARAMS, 4000)
        var[name] = np.var(np.asarray(grads["a"]), axis=0)  # the plate's sites
    assert np.all(var["disarm"] < var["reinforce"]), var


def test_arm_higher_variance_than_disarm():
    """DisARM is ARM's conditional expectation given the pair (Dong et al., 2020)."""
    _, d = per_key(estimators.elbo(model, handlers.disarm(guide)), PARAMS, 4000)
    _, a = per_key(estimators.elbo(model, handlers.arm(guide)), PARAMS, 4000)
    for j in range(2):
        assert_lower_variance(d["a"][:, j], a["a"][:, j], f"d/da[{j}]")


def test_disarm_refuses_non_bernoulli():
    def g():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    obj = estimators.elbo(lambda: numpyro.sample("z", dist.Normal(0.0, 1.0)), handlers.disarm(g))
    with pytest.raises(ValueError, match="'z'.*not a Bernoulli"):
        obj.estimate({}, jax.random.PRNGKey(0))
