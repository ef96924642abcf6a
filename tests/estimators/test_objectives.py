"""Every built-in objective's gradient is unbiased for the objective it defines.

Discrete toy (score-function sites): b ~ Bernoulli(σ(θ)), x | b ~ N(2b − 1, 1),
x = 0.3 observed; guide b ~ Bernoulli(σ(η)). With K = 3 particles there are
2³ joint configurations, so ``E[L̂]`` — and, by ``jax.grad``, its exact
gradient — is a finite sum. Continuous checks use the Normal–Normal model.
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

from stackvi import estimators
from stackvi.estimators.vimco import leave_one_out_signal
from tests.conftest import assert_lower_variance, assert_unbiased, keys

X_OBS, K = 0.3, 3
PARAMS = {"theta": jnp.asarray(0.2), "eta": jnp.asarray(-0.4)}
CONFIGS = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=K)))


def dmodel():
    b = numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("theta", 0.0)))
    numpyro.sample("x", dist.Normal(2 * b - 1, 1.0), obs=X_OBS)


def dguide():
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("eta", 0.0)))


def _log_w(b, theta, eta):
    return (dist.Bernoulli(logits=theta).log_prob(b) + dist.Normal(2 * b - 1, 1.0).log_prob(X_OBS)
            - dist.Bernoulli(logits=eta).log_prob(b))


def exact_expectation(f):
    """``(θ, η) -> E[f(log w₁..K)]`` summed over all 2^K guide configurations."""

    def run(theta, eta):
        log_q = jnp.sum(dist.Bernoulli(logits=eta).log_prob(CONFIGS), axis=1)
        vals = jax.vmap(lambda b: f(_log_w(b, theta, eta)))(CONFIGS)
        return jnp.sum(jnp.exp(log_q) * vals)

    return run


def _iwae_value(lw):
    return jax.nn.logsumexp(lw) - jnp.log(lw.shape[0])


def _renyi_value(alpha):
    return lambda lw: (jax.nn.logsumexp((1 - alpha) * lw) - jnp.log(lw.shape[0])) / (1 - alpha)


def _sample_grads(obj, n, seed=0):
    vals, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(PARAMS, k)))(keys(n, seed))
    return np.asarray(vals), np.stack([g["theta"], g["eta"]], axis=1)


def _exact_grad(f):
    return np.asarray(jax.grad(exact_expectation(f), argnums=(0, 1))(PARAMS["theta"],
                                                                    PARAMS["eta"]))


@pytest.mark.parametrize("name, make, value", [
    ("iwae", lambda: estimators.iwae(dmodel, dguide, K), _iwae_value),
    ("vimco", lambda: estimators.vimco(dmodel, dguide, K), _iwae_value),
    ("renyi(0.5)", lambda: estimators.renyi(dmodel, dguide, 0.5, K), _renyi_value(0.5)),
    pytest.param("renyi(-1)", lambda: estimators.renyi(dmodel, dguide, -1.0, K),
                 _renyi_value(-1.0), marks=pytest.mark.slow),
])
@pytest.mark.slow
def test_score_function_gradients_are_unbiased_against_enumeration(name, make, value):
    vals, grads = _sample_grads(make(), 4000)
    exact = exact_expectation(value)(PARAMS["theta"], PARAMS["eta"])
    assert_unbiased(vals, float(exact), f"{name}: value")
    assert_unbiased(grads, _exact_grad(value), f"{name}: gradient (θ, η)")


def test_vimco_has_lower_variance_than_iwae_for_the_guide():
    _, g_iwae = _sample_grads(estimators.iwae(dmodel, dguide, K), 4000, seed=1)
    _, g_vimco = _sample_grads(estimators.vimco(dmodel, dguide, K), 4000, seed=2)
    assert_lower_variance(g_vimco[:, 1], g_iwae[:, 1], "VIMCO vs IWAE, dη")


def test_vimco_leave_one_out_signal_matches_its_definition():
    lw = jnp.array([0.3, -1.2, 2.0, 0.1])
    value, signal = leave_one_out_signal(lw)
    for k in range(4):
        others = jnp.delete(lw, k)
        loo = jnp.concatenate([others, jnp.mean(others)[None]])
        np.testing.assert_allclose(signal[k], value - _iwae_value(loo), rtol=1e-5)
    with pytest.raises(ValueError, match="num_particles >= 2"):
        estimators.vimco(dmodel, dguide, 1)


def test_rws_wake_directions_are_unbiased_against_enumeration():
    vals, grads = _sample_grads(estimators.rws(dmodel, dguide, K), 4000)
    assert_unbiased(vals, float(exact_expectation(_iwae_value)(*PARAMS.values())), "rws value")

    # wake-p: exactly the θ-gradient of E[IWAE]
    wake_p = _exact_grad(_iwae_value)[0]

    # wake-q: E[Σₖ w̄ₖ ∇_η log q(bₖ)], ∇_η log Bern(b; σ(η)) = b − σ(η)
    def wake_q(theta, eta):
        log_q = jnp.sum(dist.Bernoulli(logits=eta).log_prob(CONFIGS), axis=1)
        w = jax.vmap(lambda b: jax.nn.softmax(_log_w(b, theta, eta)))(CONFIGS)
        score = CONFIGS - jax.nn.sigmoid(eta)
        return jnp.sum(jnp.exp(log_q) * jnp.sum(w * score, axis=1))

    exact = np.array([wake_p, float(wake_q(*PARAMS.values()))])
    assert_unbiased(grads, exact, "rws (wake-p, wake-q)")


def test_rws_sleep_phase_matches_its_closed_form():
    # z ~ N(0, 1), x ~ N(z, 1); q(z | x) = N(a x + b, s): E_{p(z,x)} ∇ log q in closed form.
    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        a, b = numpyro.param("a", 0.0), numpyro.param("b", 0.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("z", dist.Normal(a * x + b, s))

    obj = estimators.rws(model, guide, 2, wake_q=False, sleep_q=True,
                         sleep_args=lambda dream: ((dream["x"],), {}), num_sleep=1)
    a, b, s = 0.3, -0.2, 0.8
    params = {"a": jnp.asarray(a), "b": jnp.asarray(b), "s": jnp.log(jnp.asarray(s))}
    g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, 0.7)[1]))(keys(4000))
    got = np.stack([g["a"], g["b"], g["s"]], axis=1)
    exact = [(1 - 2 * a) / s**2, -b / s**2, -1 + (1 - 2 * a + 2 * a**2 + b**2) / s**2]
    assert_unbiased(got, exact, "rws sleep-q (a, b, log s)")
    with pytest.raises(ValueError, match="sleep_args"):
        estimators.rws(model, guide, 2, sleep_q=True)


# --------------------------------------------------------------------------- continuous


def _mu_model(x):
    """Normal–Normal with a learnable prior mean (a model param for wake-p / DReG)."""
    z = numpyro.sample("z", dist.Normal(numpyro.param("mu0", 0.3), 1.5))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 0.8), obs=x)


def _grads3(obj, params, x, n, seed):
    g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, x)[1]))(keys(n, seed))
    return np.stack([g["m"], g["v"], g["mu0"]], axis=1)


def test_dreg_is_unbiased_for_the_iwae_gradient(normal_normal):
    nn = normal_normal
    params = {**nn.params(0.2, 0.5), "mu0": jnp.asarray(0.3)}
    ref = _grads3(estimators.iwae(_mu_model, nn.guide, 5), params, nn.data, 4000, 0)
    got = _grads3(estimators.dreg(_mu_model, nn.guide, 5), params, nn.data, 4000, 1)
    se = np.sqrt(ref.var(0, ddof=1) / len(ref) + got.var(0, ddof=1) / len(got))
    assert np.all(np.abs(got.mean(0) - ref.mean(0)) < 4 * se), (got.mean(0), ref.mean(0), se)


def test_dreg_guide_gradient_vanishes_at_the_exact_posterior(normal_normal):
    nn = normal_normal
    params = {**nn.params(*nn.posterior), "mu0": jnp.asarray(nn.mu0)}
    dreg = _grads3(estimators.dreg(_mu_model, nn.guide, 20), params, nn.data, 200, 0)
    iwae = _grads3(estimators.iwae(_mu_model, nn.guide, 20), params, nn.data, 200, 0)
    np.testing.assert_allclose(dreg[:, :2], 0.0, atol=1e-3)  # every sample, not on average
    assert np.all(iwae[:, :2].std(0) > 1e-2)                 # IWAE's is zero only on average


def test_dreg_rejects_a_discrete_guide_site():
    obj = estimators.dreg(dmodel, dguide, 3)
    with pytest.raises(ValueError, match=r"dreg: guide site 'b' \(Bernoulli\w*\).*pathwise"):
        obj.value_and_grad(PARAMS, jax.random.PRNGKey(0))


def test_renyi_limits_are_elbo_and_iwae(normal_normal):
    nn = normal_normal
    params, x, key = nn.params(0.2, 0.5), nn.data, jax.random.PRNGKey(3)
    r0 = estimators.renyi(nn.model, nn.guide, 0.0, 4).estimate(params, key, x)
    iw = estimators.iwae(nn.model, nn.guide, 4).estimate(params, key, x)
    r1 = estimators.renyi(nn.model, nn.guide, 1.0, 4).estimate(params, key, x)
    el = estimators.elbo(nn.model, nn.guide, 4).estimate(params, key, x)
    np.testing.assert_allclose([r0, r1], [iw, el], rtol=1e-6)
    assert math.isfinite(float(r0))
