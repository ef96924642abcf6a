"""FIVO / variational SMC: values and gradients against exact answers.

* Resampling gradients: on a tiny HMM (2 states, 2 particles, 3 steps) the
  expectation ``E[log Ẑ]`` over *every* outcome of the particle filter
  (latents and ancestor vectors) is enumerated exactly, so its gradient is
  exact; with ``resampling_gradient="score"`` the estimator must be unbiased
  for it, for every scheme; the default (``"drop"``) must show its bias.
* Large ``K``: the FIVO gradient of the LGSSM approaches the Kalman
  log-likelihood gradient.
* Static latents: VI over a global offset with the path marginalized by SMC is
  a lower bound on ``log p(y)`` (quadrature over the offset × Kalman).
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
from numpyro.distributions import constraints

from stackvi import estimators
from stackvi.handlers import resampling
from stackvi.marginal import marginal
from stackvi.models.state_space import (
    hmm_model,
    kalman,
    lgssm_matrices,
    lgssm_model,
    lgssm_simulate,
)
from tests.conftest import Z_SIGMAS, assert_unbiased, keys
from tests.handlers.test_smc import optimal_proposal

# --------------------------------------------------------------------------- tiny HMM, exact

Y3 = jnp.array([0.4, -0.9, 1.3])
INIT = jnp.array([0.55, 0.45])
MU0 = jnp.array([-0.6, 0.9])
LOGITS0 = jnp.array([[0.4, -0.4], [-0.2, 0.3]])
K = 2


def tiny_model(y):
    mu = numpyro.param("mu", MU0)
    logits = numpyro.param("logits", LOGITS0)
    hmm_model(y, INIT, jax.nn.softmax(logits, -1), mu)


def expected_log_z(mu, logits, scheme):
    """``E[log Ẑ]`` of the bootstrap filter (resampling every step) by full enumeration."""
    trans = jax.nn.softmax(logits, -1)
    T, S = Y3.shape[0], 2
    z_all = np.array(list(itertools.product(range(S), repeat=K * T))).reshape(-1, T, K)
    a_all = np.array(list(itertools.product(range(K), repeat=K * (T - 1)))).reshape(-1, T - 1, K)
    z = jnp.asarray(np.repeat(z_all, len(a_all), axis=0))
    a = jnp.asarray(np.tile(a_all, (len(z_all), 1, 1)))

    def one(z, a):
        lw = dist.Normal(mu[z], 1.0).log_prob(Y3[:, None])  # [T, K]
        log_p = jnp.sum(jnp.log(INIT[z[0]]))
        for t in range(1, T):
            log_p += resampling.log_prob(scheme, lw[t - 1], a[t - 1])
            log_p += jnp.sum(jnp.log(trans[z[t - 1][a[t - 1]], z[t]]))
        log_z = jnp.sum(jax.nn.logsumexp(lw, axis=1) - math.log(K))
        return log_p, log_z

    log_p, log_z = jax.vmap(one)(z, a)
    p = jnp.exp(log_p)
    return jnp.sum(p * log_z), jnp.sum(p)


@pytest.mark.parametrize("scheme", [
    "multinomial", pytest.param("systematic", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_score_resampling_gradient_is_unbiased(scheme):
    (value, total), grads = jax.value_and_grad(expected_log_z, argnums=(0, 1), has_aux=True)(
        MU0, LOGITS0, scheme)
    assert float(total) == pytest.approx(1.0, abs=1e-5)  # the enumeration is complete
    obj = estimators.fivo(tiny_model, num_particles=K, resampling=scheme,
                          resampling_gradient="score")
    params = obj.init(jax.random.PRNGKey(0), Y3)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, Y3)))(keys(10000, seed=1))
    assert_unbiased(v, value, f"{scheme}: E[log Ẑ]")
    assert_unbiased(g["mu"], grads[0], f"{scheme}: d/dmu")
    assert_unbiased(g["logits"], grads[1], f"{scheme}: d/dlogits")


@pytest.mark.slow
def test_dropping_the_resampling_score_is_biased():
    g_mu = jax.grad(lambda m: expected_log_z(m, LOGITS0, "multinomial")[0])(MU0)
    obj = estimators.fivo(tiny_model, num_particles=K, resampling="multinomial")
    params = obj.init(jax.random.PRNGKey(0), Y3)
    _, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, Y3)))(keys(20000, seed=2))
    g = np.asarray(g["mu"], np.float64)
    se = g.std(0, ddof=1) / math.sqrt(g.shape[0])
    # The documented bias of standard FIVO (measured: about 10 standard errors here).
    assert np.max(np.abs(g.mean(0) - np.asarray(g_mu)) / se) > Z_SIGMAS


# --------------------------------------------------------------------------- LGSSM, Kalman

A, C = lgssm_matrices()
_, Y = lgssm_simulate(jax.random.PRNGKey(0), A, C, T=10)
ALPHA = 0.42


def alpha_model(y):
    """The LGSSM with its coupling ``α`` as a parameter."""
    A, C = lgssm_matrices(alpha=numpyro.param("alpha", ALPHA))
    lgssm_model(y, A, C)


def alpha_proposal(x_prev, y_t):
    """The locally optimal proposal, sharing the model's ``α``."""
    A, C = lgssm_matrices(alpha=numpyro.param("alpha", ALPHA))
    optimal_proposal(A, C)(x_prev, y_t)


@pytest.mark.slow
def test_gradient_approaches_the_kalman_gradient_for_large_k():
    log_z, exact = jax.value_and_grad(lambda a: kalman(Y, *lgssm_matrices(alpha=a))[0])(ALPHA)
    # Adaptive resampling (ESS ≤ K/2) with a good proposal: the dropped resampling
    # term is rarely in play, so the remaining bias is O(1/K), below the MC error here.
    obj = estimators.fivo(alpha_model, num_particles=1000, proposal=alpha_proposal,
                          ess_threshold=0.5)
    params = obj.init(jax.random.PRNGKey(0), Y)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, Y)))(keys(50, seed=3))
    v = np.asarray(v, np.float64)
    assert v.mean() - float(log_z) <= Z_SIGMAS * v.std(ddof=1) / math.sqrt(v.size)
    assert_unbiased(g["alpha"], exact, "d log Z / d alpha")


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(resampling="multinomial"),
    dict(resampling="stratified", resampling_gradient="score", ess_threshold=0.5,
         proposal=alpha_proposal, baseline="ema"),
])
def test_gradients_are_finite(options):
    obj = estimators.fivo(alpha_model, num_particles=16, **options)
    params = obj.init(jax.random.PRNGKey(0), Y)
    v, g = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1), Y)
    assert np.isfinite(float(v)) and np.isfinite(float(g["alpha"])), options


def offset_model(y):
    """A static latent offset ``θ ~ N(0, 1)`` on every observation, the path in a scan."""
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    lgssm_model(y - theta, A, C)


def offset_guide(y):
    m = numpyro.param("m", 0.3)
    s = numpyro.param("s", 0.4, constraint=constraints.positive)
    numpyro.sample("theta", dist.Normal(m, s))


def offset_proposal(x_prev, y_t):
    optimal_proposal(A, C)(x_prev, y_t)


@pytest.mark.parametrize("bound", ["elbo", pytest.param("iwae", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_static_latents_give_a_bound_below_the_exact_one(bound):
    obj = estimators.fivo(offset_model, offset_guide, num_particles=16,
                          proposal=offset_proposal, num_samples=4, bound=bound)
    params = obj.init(jax.random.PRNGKey(0), Y)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, Y)))(keys(200, seed=5))
    v = np.asarray(v, np.float64)
    assert np.all(np.isfinite(np.asarray(g["m"]))) and np.all(np.isfinite(np.asarray(g["s"])))
    # E[log Ẑ(θ)] ≤ log p(y | θ) for every θ: the SMC ELBO sits below the exact ELBO of the
    # guide, and the SMC IWAE below the exact IWAE, itself below log p(y).
    exact = exact_elbo() if bound == "elbo" else exact_log_evidence()
    assert v.mean() - exact <= Z_SIGMAS * v.std(ddof=1) / math.sqrt(v.size)


def exact_elbo(m: float = 0.3, s: float = 0.4) -> float:
    """ELBO of the guide N(m, s²) over θ: Gauss–Hermite quadrature, log p(y | θ) by Kalman."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    theta = m + s * jnp.asarray(nodes, jnp.float32)
    log_lik = jax.vmap(lambda t: kalman(Y - t, A, C)[0])(theta)
    integrand = (dist.Normal(0.0, 1.0).log_prob(theta) + log_lik
                 - dist.Normal(m, s).log_prob(theta))
    return float(np.sum(weights * np.asarray(integrand, np.float64)) / math.sqrt(2 * math.pi))


def exact_log_evidence() -> float:
    """log p(y) of the offset model: Gauss–Hermite quadrature over θ ~ N(0, 1)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    log_lik = np.asarray(jax.vmap(lambda t: kalman(Y - t, A, C)[0])(
        jnp.asarray(nodes, jnp.float32)), np.float64)
    m = log_lik.max()
    return float(m + np.log(np.sum(weights * np.exp(log_lik - m)) / math.sqrt(2 * math.pi)))


def test_fivo_errors():
    def no_scan(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="ran no numpyro.contrib.control_flow.scan"):
        estimators.fivo(no_scan, num_particles=4).init(jax.random.PRNGKey(0), 1.0)
    with pytest.raises(ValueError, match="num_particles must be an int >= 1"):
        estimators.fivo(alpha_model, num_particles=0)
    with pytest.raises(ValueError, match="bound must be one of"):
        estimators.fivo(alpha_model, bound="cubo")


def hierarchical_guide(y):
    """q(θ) = ∫ N(u; m, 0.3) N(θ; u, 0.3) du, with u integrated out by ``marginal``."""
    m = numpyro.param("m", 0.3)
    u = numpyro.sample("u", dist.Normal(m, 0.3))
    numpyro.sample("theta", dist.Normal(u, 0.3))


def reverse(values, y):
    numpyro.sample("u", dist.Normal(values["theta"] * numpyro.param("c", 0.5), 0.3))


@pytest.mark.slow
def test_fivo_over_a_marginal_guide_is_a_lower_bound():
    # HVI-style static guide (stackvi.marginal) with the path marginalized by SMC: both
    # approximate marginalizations compose, and the result stays below log p(y).
    q = marginal(hierarchical_guide, reverse, aux=["u"], num_particles=4)
    obj = estimators.fivo(offset_model, q, num_particles=16, proposal=offset_proposal)
    params = obj.init(jax.random.PRNGKey(0), Y)
    v, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, Y)))(keys(200, seed=6))
    v = np.asarray(v, np.float64)
    assert sorted(g) == ["c", "m"]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g.values())
    assert v.mean() - exact_log_evidence() <= Z_SIGMAS * v.std(ddof=1) / math.sqrt(v.size)
