"""Model-side enumeration: discrete model latents the guide does not sample are summed out.

Exact answers: the Gaussian-mixture log-likelihood against brute force over
every assignment (DESIGN.md §7), the HMM against the log-space forward
algorithm (itself checked against brute force over every path), and gradient
means against NumPyro's ``TraceEnum_ELBO`` on the same model, guide and params.
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
from numpyro.contrib.control_flow import scan
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer import TraceEnum_ELBO
from scipy.stats import norm

from stackvi import estimators
from stackvi.handlers import enumerate as enum
from stackvi.handlers import reinforce
from tests.conftest import assert_unbiased, keys

# --------------------------------------------------------------------------- Gaussian mixture

PI = np.array([0.5, 0.3, 0.2])
SIGMA = 0.8
X = jnp.array([-1.2, 0.3, 2.2, 1.7])


def gmm_model(x):
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        k = numpyro.sample("k", dist.Categorical(jnp.asarray(PI)))
        numpyro.sample("x", dist.Normal(locs[k], SIGMA), obs=x)


def point_guide(x):
    m = numpyro.param("m", jnp.array([-1.0, 0.5, 2.0]))
    numpyro.sample("locs", dist.Delta(m, event_dim=1))


def normal_guide(x):
    m = numpyro.param("m", jnp.array([-1.0, 0.5, 2.0]))
    numpyro.sample("locs", dist.Normal(m, 0.3).to_event(1))


def brute_force_gmm(x, locs) -> float:
    """log Σ over all K^n assignments of p(x, k | locs)."""
    x = np.asarray(x, np.float64)
    terms = []
    for ks in itertools.product(range(3), repeat=len(x)):
        ks = np.array(ks)
        terms.append(np.sum(np.log(PI[ks]) + norm.logpdf(x, locs[ks], SIGMA)))
    return float(np.logaddexp.reduce(terms))


def test_gmm_exact_log_likelihood_vs_brute_force():
    obj = estimators.elbo(gmm_model, point_guide)
    params = obj.init(jax.random.PRNGKey(0), X)
    m = np.asarray(params["m"], np.float64)
    expected = brute_force_gmm(X, m) + norm.logpdf(m, 0.0, 3.0).sum()
    # the closed form of DESIGN.md §7 agrees with brute force
    closed = sum(np.logaddexp.reduce(np.log(PI) + norm.logpdf(xn, m, SIGMA)) for xn in X)
    assert math.isclose(closed + norm.logpdf(m, 0.0, 3.0).sum(), expected, rel_tol=1e-10)
    value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1), X)
    assert math.isclose(float(value), expected, rel_tol=1e-5)
    # and the gradient is the exact gradient of the marginal likelihood

    def exact(mm):
        lp = jnp.log(jnp.asarray(PI)) + dist.Normal(mm, SIGMA).log_prob(X[:, None])
        return jnp.sum(jax.nn.logsumexp(lp, -1)) + jnp.sum(dist.Normal(0.0, 3.0).log_prob(mm))

    np.testing.assert_allclose(grads["m"], jax.grad(exact)(params["m"]), rtol=1e-4, atol=1e-5)


def test_gmm_gradient_mean_matches_numpyro_trace_enum_elbo():
    n = 2000
    obj = estimators.elbo(gmm_model, normal_guide)
    params = obj.init(jax.random.PRNGKey(0), X)
    _, ours = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, X)))(keys(n, 3))
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    # NumPyro sums out only sites marked for enumeration (unmarked, it samples k from
    # the prior with no score term); we mark them, stackvi does it by itself.
    marked = config_enumerate(gmm_model)

    def theirs(k):
        return jax.grad(lambda p: -loss.loss(k, p, marked, normal_guide, X))(params)["m"]

    g_np = np.asarray(jax.jit(jax.vmap(theirs))(keys(n, 4)))
    g = np.asarray(ours["m"])
    se = np.sqrt(g.var(0, ddof=1) / n + g_np.var(0, ddof=1) / n)
    assert np.all(np.abs(g.mean(0) - g_np.mean(0)) <= 4 * se), (g.mean(0), g_np.mean(0), se)


@pytest.mark.slow
def test_model_enumeration_composes_with_reinforce_guide_site():
    """A discrete guide site under REINFORCE, the mixture assignment summed out in the model."""

    def model(x):
        s = numpyro.sample("s", dist.Bernoulli(0.5))
        with numpyro.plate("data", x.shape[0]):
            k = numpyro.sample("k", dist.Bernoulli(0.3))
            numpyro.sample("x", dist.Normal(2.0 * k + s, 1.0), obs=x)

    def guide(x):
        numpyro.sample("s", dist.Bernoulli(probs=jax.nn.sigmoid(numpyro.param("t", 0.2))))

    def exact(t):
        q1 = jax.nn.sigmoid(t)
        out = 0.0
        for s, q in ((1.0, q1), (0.0, 1 - q1)):
            lik = jnp.sum(jnp.log(0.3 * jnp.exp(dist.Normal(2.0 + s, 1.0).log_prob(X))
                                  + 0.7 * jnp.exp(dist.Normal(s, 1.0).log_prob(X))))
            out = out + q * (jnp.log(0.5) + lik - jnp.log(q))
        return out

    obj = estimators.elbo(model, reinforce(guide))
    params = {"t": jnp.float32(0.2)}
    values, grads = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, X)))(keys(3000))
    v, g = jax.value_and_grad(exact)(0.2)
    assert_unbiased(values, v, "value")
    assert_unbiased(grads["t"], g, "gradient")
    # enumerating the guide site too: model- and guide-side enumeration together, exact
    value, grad = estimators.elbo(model, enum(guide)).value_and_grad(params, keys(1)[0], X)
    np.testing.assert_allclose(value, v, rtol=1e-5)
    np.testing.assert_allclose(grad["t"], g, rtol=1e-4, atol=1e-6)


def test_model_latent_without_finite_support_is_still_an_error():
    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pass

    with pytest.raises(ValueError, match="'z'.*not sampled by the guide"):
        obj = estimators.elbo(model, guide)
        obj.estimate(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))


# --------------------------------------------------------------------------- HMM (scan)

TRANS = np.array([[0.8, 0.2], [0.3, 0.7]])
INIT = np.array([0.6, 0.4])
EMIT_SD = 0.7


def hmm_model(y):
    locs = numpyro.sample("locs", dist.Normal(jnp.array([-1.0, 1.0]), 1.0).to_event(1))
    z0 = numpyro.sample("z0", dist.Categorical(jnp.asarray(INIT)))
    numpyro.sample("y0", dist.Normal(locs[z0], EMIT_SD), obs=y[0])

    def step(z_prev, y_t):
        z = numpyro.sample("z", dist.Categorical(jnp.asarray(TRANS)[z_prev]))
        numpyro.sample("y", dist.Normal(locs[z], EMIT_SD), obs=y_t)
        return z, None

    scan(step, z0, y[1:])


def hmm_guide(y):
    numpyro.sample("locs", dist.Delta(numpyro.param("m", jnp.array([-0.8, 1.2])), event_dim=1))


def forward(y, locs) -> float:
    """Log-space forward algorithm."""
    y = np.asarray(y, np.float64)
    la = np.log(INIT) + norm.logpdf(y[0], locs, EMIT_SD)
    for t in range(1, len(y)):
        la = np.logaddexp.reduce(la[:, None] + np.log(TRANS), axis=0)
        la = la + norm.logpdf(y[t], locs, EMIT_SD)
    return float(np.logaddexp.reduce(la))


def brute_force_hmm(y, locs) -> float:
    y = np.asarray(y, np.float64)
    out = []
    for zs in itertools.product(range(2), repeat=len(y)):
        pairs = zip(zs[:-1], zs[1:], strict=True)
        lp = np.log(INIT[zs[0]]) + sum(np.log(TRANS[a, b]) for a, b in pairs)
        out.append(lp + norm.logpdf(y, locs[list(zs)], EMIT_SD).sum())
    return float(np.logaddexp.reduce(out))


def test_forward_algorithm_is_brute_force():
    y = np.random.RandomState(5).randn(6)
    m = np.array([-0.8, 1.2])
    assert math.isclose(forward(y, m), brute_force_hmm(y, m), rel_tol=1e-10)


@pytest.mark.parametrize("T", [pytest.param(5, marks=pytest.mark.slow), 300])
@pytest.mark.slow
def test_hmm_vs_forward_algorithm(T):
    """Exact, and a scan of T = 300 steps compiles and runs: linear in T, not 2^T."""
    y = jnp.asarray(np.random.RandomState(T).randn(T), jnp.float32)
    obj = estimators.elbo(hmm_model, hmm_guide)
    params = obj.init(jax.random.PRNGKey(0), y)
    m = np.asarray(params["m"], np.float64)
    expected = forward(y, m) + norm.logpdf(m, [-1.0, 1.0], 1.0).sum()
    value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1), y)
    assert math.isclose(float(value), expected, rel_tol=1e-5), (value, expected)
    # the gradient is that of the forward algorithm (written in JAX) plus the prior

    def exact(locs):
        emit = dist.Normal(locs, EMIT_SD).log_prob(y[:, None])

        def step(la, e):
            return jax.nn.logsumexp(la[:, None] + jnp.log(TRANS), 0) + e, None

        la, _ = jax.lax.scan(step, jnp.log(INIT) + emit[0], emit[1:])
        prior = dist.Normal(jnp.array([-1.0, 1.0]), 1.0).log_prob(locs).sum()
        return jax.nn.logsumexp(la) + prior

    np.testing.assert_allclose(grads["m"], jax.grad(exact)(params["m"]), rtol=1e-4, atol=1e-4)
