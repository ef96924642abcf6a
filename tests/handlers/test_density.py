"""The density handler against ``numpyro.infer.util.log_density``, exactly, jitted and eager."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro.distributions import constraints
from numpyro.handlers import mask, scale, seed, substitute, trace
from numpyro.infer.util import log_density

from stackvi.handlers import density, trace_terms

X = jnp.array([0.3, -1.2, 2.0, 0.7, 1.1, -0.4])


def plates_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.5))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, sigma), obs=x)


def nested_model(x):
    w = numpyro.param("w", jnp.ones(2), constraint=constraints.positive)
    with numpyro.plate("groups", 2, dim=-2):
        g = numpyro.sample("g", dist.Normal(0.0, w[:, None]))
        with numpyro.plate("items", 3, dim=-1):
            numpyro.sample("y", dist.Normal(g, 1.0), obs=x.reshape(2, 3))
    numpyro.sample("vec", dist.Normal(jnp.zeros(3), 1.0).to_event(1))


def mask_scale_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", x.shape[0]), mask(mask=x > 0), scale(scale=3.0):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def subsample_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", x.shape[0], subsample_size=4) as idx:
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def discrete_model(x):
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    with numpyro.plate("data", x.shape[0]):
        b = numpyro.sample("b", dist.Bernoulli(p))
        numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)


MODELS = {
    "plates": (plates_model, lambda u: {"mu": u[0], "sigma": jnp.exp(u[1])}),
    "nested": (nested_model, lambda u: {"g": u[:2].reshape(2, 1), "vec": u[2:5],
                                        "w": jnp.exp(u[5:7])}),
    "mask_scale": (mask_scale_model, lambda u: {"mu": u[0]}),
    "subsample": (subsample_model, lambda u: {"mu": u[0]}),
    "discrete": (discrete_model, lambda u: {"p": jax.nn.sigmoid(u[0]),
                                            "b": (u[1:7] > 0).astype(jnp.float32)}),
}


def stackvi_log_joint(model, values, x):
    with density() as d:
        substitute(seed(model, 7), values)(x)
    return d.log_joint


def numpyro_log_joint(model, values, x):
    return log_density(seed(model, 7), (x,), {}, values)[0]


JITTED = jax.jit(stackvi_log_joint, static_argnums=0)


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=3, deadline=None, derandomize=True)
@given(u=st.lists(st.floats(-2.0, 2.0, width=32), min_size=7, max_size=7))
def test_density_equals_numpyro_log_density(name, u):
    model, make = MODELS[name]
    values = make(jnp.asarray(u, jnp.float32))
    expected = numpyro_log_joint(model, values, X)
    eager = stackvi_log_joint(model, values, X)
    jitted = JITTED(model, values, X)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jitted, expected, rtol=1e-5, atol=1e-5)


def test_density_terms_are_per_site_and_per_plate():
    values = {"g": jnp.zeros((2, 1)), "vec": jnp.zeros(3), "w": jnp.ones(2)}
    with density() as d:
        substitute(nested_model, values)(X)
    assert d.terms.labels() == ["g", "y", "vec"]
    assert d.terms["g"].names == ("groups",)
    assert d.terms["y"].names == ("groups", "items") and d.terms["y"].array.shape == (2, 3)
    assert d.terms["vec"].names == ()
    y = X.reshape(2, 3)
    np.testing.assert_allclose(d.terms["y"].array, dist.Normal(0.0, 1.0).log_prob(y), rtol=1e-6)


def test_density_as_wrapper_and_reentry_resets():
    values = {"mu": jnp.array(0.5), "sigma": jnp.array(1.5)}
    d = density(substitute(plates_model, values))
    d(X)
    first = float(d.log_joint)
    d(X)  # a second run starts from scratch, it does not accumulate
    assert float(d.log_joint) == pytest.approx(first, rel=1e-6)
    assert first == pytest.approx(float(numpyro_log_joint(plates_model, values, X)), rel=1e-5)


def test_trace_terms_equals_density():
    values = {"mu": jnp.array(-0.3), "sigma": jnp.array(0.9)}
    tr = trace(substitute(plates_model, values)).get_trace(X)
    terms = trace_terms(tr, prefix="p:")
    assert terms.labels() == ["p:mu", "p:sigma", "p:x"]
    with density() as d:
        substitute(plates_model, values)(X)
    np.testing.assert_allclose(terms.total(), d.log_joint, rtol=1e-6)


def test_density_includes_auxiliary_and_discrete_guide_sites():
    def guide():
        numpyro.sample("aux", dist.Normal(1.0, 1.0), infer={"is_auxiliary": True})
        numpyro.sample("k", dist.Categorical(jnp.array([0.2, 0.8])))

    with density() as d:
        substitute(guide, {"aux": 1.0, "k": 1})()
    expected = dist.Normal(1.0, 1.0).log_prob(1.0) + jnp.log(0.8)
    np.testing.assert_allclose(d.log_joint, expected, rtol=1e-6)
