"""IWAE / Rényi / VIMCO / DReG: one bound per data point by default, whole batch on request.

Conjugate model with a latent per data point: z_n ~ N(0, 1), x_n | z_n ~ N(z_n, 1),
so log p(x) = Σ log N(x_n; 0, √2) and the posterior is N(x_n/2, 1/2) per point.
A discrete per-point model checks the score-function gradients of the per-point
bound against exact enumeration of every particle configuration.
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
from numpyro.infer import RenyiELBO

from stackvi import estimators
from tests.conftest import assert_unbiased, keys

X = jnp.array([0.5, -1.2, 2.0, 0.3, 1.1, -0.4])
LOG_P = float(jnp.sum(dist.Normal(0.0, math.sqrt(2.0)).log_prob(X)))


def model(x, subsample_size=None):
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def guide(x, subsample_size=None):
    m = numpyro.param("m", x / 2 + 0.6)
    s = numpyro.param("s", 1.2, constraint=constraints.positive)
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("z", dist.Normal(m[idx], s))


def exact_guide(x, subsample_size=None):
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("z", dist.Normal(x[idx] / 2, math.sqrt(0.5)))


def _estimates(obj, params, n, seed=0, **kw):
    f = jax.jit(jax.vmap(lambda k: obj.estimate(params, k, X, **kw)))
    return np.asarray(f(keys(n, seed)), np.float64)


def _mean_se(v):
    return v.mean(), v.std(ddof=1) / math.sqrt(v.size)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.slow
def test_exact_posterior_gives_log_evidence_both_ways(k):
    for per in (True, False):
        for make in (estimators.iwae, estimators.vimco, estimators.dreg):
            if make is estimators.vimco and k == 1:
                continue
            obj = make(model, exact_guide, k, per_datapoint=per)
            v = _estimates(obj, {}, 4)
            np.testing.assert_allclose(v, LOG_P, rtol=1e-5)


def _paired_gt(a, b, what):
    """``E[a] > E[b]`` beyond 4 standard errors of the paired differences (same keys)."""
    d = np.asarray(a) - np.asarray(b)
    mean, se = _mean_se(d)
    assert mean > 4 * se, (what, mean, se)


@pytest.mark.slow
def test_per_point_bound_is_tighter_and_both_tend_to_log_evidence():
    obj = estimators.iwae(model, guide)
    params = obj.init(jax.random.PRNGKey(0), X)
    v = {(per, k): _estimates(estimators.iwae(model, guide, k, per_datapoint=per), params, 1000)
         for per in (True, False) for k in (1, 4, 64)}  # the same keys throughout: paired
    for (per, k), vals in v.items():
        mean, se = _mean_se(vals)
        assert mean <= LOG_P + 4 * se, (per, k, mean, LOG_P)  # a lower bound
    for per in (True, False):  # both tend to log p(x): the gap shrinks with K
        _paired_gt(v[per, 4], v[per, 1], f"per_datapoint={per}: K=4 vs 1")
        _paired_gt(v[per, 64], v[per, 4], f"per_datapoint={per}: K=64 vs 4")
    for k in (4, 64):  # per data point: above the whole-batch bound (K = 1: the same)
        _paired_gt(v[True, k], v[False, k], f"per point vs whole batch, K={k}")
    np.testing.assert_allclose(v[True, 1], v[False, 1], rtol=1e-5)
    # K = 64 per point: the gap is ≈ Σₙ χ²(post_n ‖ q_n) / (2K) = 1.61 / 64 here
    assert LOG_P - v[True, 64].mean() < 0.1


@pytest.mark.parametrize("alpha, subsample", [(0.0, None), (0.0, 3), (0.5, None)])
@pytest.mark.slow
def test_equals_numpyro_renyi_elbo(alpha, subsample):
    k, n = 8, 1500
    obj = (estimators.iwae(model, guide, k) if alpha == 0.0
           else estimators.renyi(model, guide, alpha, k))
    params = obj.init(jax.random.PRNGKey(0), X)
    ours = _estimates(obj, params, n, seed=1, subsample_size=subsample)
    constrained = obj.constrain(params, X)
    elbo = RenyiELBO(alpha=alpha, num_particles=k)
    theirs = -np.asarray(jax.jit(jax.vmap(lambda key: elbo.loss(
        key, constrained, model, guide, X, subsample_size=subsample)))(keys(n, 2)), np.float64)
    (m1, s1), (m2, s2) = _mean_se(ours), _mean_se(theirs)
    assert abs(m1 - m2) <= 4 * math.hypot(s1, s2), (m1, s1, m2, s2)
    if subsample is None and alpha == 0.0:  # and it differs from the whole-batch bound
        whole = _estimates(estimators.iwae(model, guide, k, per_datapoint=False), params, n, 3)
        m3, s3 = _mean_se(whole)
        assert m1 - m3 > 4 * math.hypot(s1, s3)


@pytest.mark.slow
def test_vimco_and_dreg_values_are_the_per_point_iwae():
    params = estimators.iwae(model, guide).init(jax.random.PRNGKey(0), X)
    key = jax.random.PRNGKey(7)
    for per in (True, False):
        iw = float(estimators.iwae(model, guide, 4, per_datapoint=per).estimate(params, key, X))
        for make in (estimators.vimco, estimators.dreg):
            v = float(make(model, guide, 4, per_datapoint=per).estimate(params, key, X))
            assert v == pytest.approx(iw, rel=1e-5), (make.__name__, per)


def test_per_datapoint_must_be_a_bool():
    with pytest.raises(TypeError, match="per_datapoint must be True"):
        estimators.iwae(model, guide, 2, per_datapoint="yes")
    with pytest.raises(TypeError, match="rws: per_datapoint must be True"):
        estimators.rws(model, guide, 2, per_datapoint=1)


# --------------------------------------------------------------------------- score function

XD = jnp.array([0.3, -0.5])
KD = 2
CONFIGS = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=KD * 2))).reshape(-1, KD, 2)
PARAMS = {"theta": jnp.asarray(0.2), "eta": jnp.array([-0.4, 0.7])}


def dmodel():
    theta = numpyro.param("theta", 0.0)
    with numpyro.plate("data", 2):
        b = numpyro.sample("b", dist.Bernoulli(logits=theta))
        numpyro.sample("x", dist.Normal(2 * b - 1, 1.0), obs=XD)


def dguide():
    eta = numpyro.param("eta", jnp.zeros(2))
    with numpyro.plate("data", 2):
        numpyro.sample("b", dist.Bernoulli(logits=eta))


def _exact(f):
    """``E[Σₙ f(log w₁ₙ..w_Kₙ)]`` over all 2^(K·N) configurations, as a function of params."""

    def run(theta, eta):
        def one(b):  # b: (K, N)
            lw = (dist.Bernoulli(logits=theta).log_prob(b)
                  + dist.Normal(2 * b - 1, 1.0).log_prob(XD)
                  - dist.Bernoulli(logits=eta).log_prob(b))
            return jnp.sum(dist.Bernoulli(logits=eta).log_prob(b)), jnp.sum(f(lw))

        log_q, vals = jax.vmap(one)(CONFIGS)
        return jnp.sum(jnp.exp(log_q) * vals)

    return run


def _renyi(alpha):
    return lambda lw: (jax.nn.logsumexp((1 - alpha) * lw, axis=0) - jnp.log(KD)) / (1 - alpha)


@pytest.mark.parametrize("name, make, alpha", [
    ("iwae", lambda: estimators.iwae(dmodel, dguide, KD), 0.0),
    ("vimco", lambda: estimators.vimco(dmodel, dguide, KD), 0.0),
    ("renyi(0.5)", lambda: estimators.renyi(dmodel, dguide, 0.5, KD), 0.5),
])
@pytest.mark.slow
def test_per_point_score_function_gradients_are_unbiased(name, make, alpha):
    obj = make()
    vals, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(PARAMS, k)))(keys(4000, 0))
    exact = _exact(_renyi(alpha))
    assert_unbiased(vals, float(exact(PARAMS["theta"], PARAMS["eta"])), f"{name}: value")
    grads = np.concatenate([np.asarray(g["theta"])[:, None], np.asarray(g["eta"])], axis=1)
    want = jax.grad(exact, argnums=(0, 1))(PARAMS["theta"], PARAMS["eta"])
    assert_unbiased(grads, np.concatenate([[want[0]], want[1]]), f"{name}: gradient")


def _exact_rws(per_datapoint: bool):
    """Exact ``E[value]`` and ``E[(wake-p, wake-q per η_n)]`` of RWS on the discrete model."""
    theta, eta = PARAMS["theta"], PARAMS["eta"]

    def one(b):  # b: (K, N)
        lw = (dist.Bernoulli(logits=theta).log_prob(b)
              + dist.Normal(2 * b - 1, 1.0).log_prob(XD)
              - dist.Bernoulli(logits=eta).log_prob(b))
        if not per_datapoint:  # one weight per particle: the product over the batch
            lw = jnp.broadcast_to(jnp.sum(lw, axis=1, keepdims=True), lw.shape)
        w = jax.nn.softmax(lw, axis=0)
        value = jnp.sum(jax.nn.logsumexp(lw, axis=0) - jnp.log(KD))
        if not per_datapoint:
            value = value / 2  # the broadcast counted the batch's bound once per point
        wake_p = jnp.sum(w * (b - jax.nn.sigmoid(theta)))    # ∇_θ log Bern(b; σ(θ))
        wake_q = jnp.sum(w * (b - jax.nn.sigmoid(eta)), axis=0)  # ∇_{η_n}, one per point
        return jnp.sum(dist.Bernoulli(logits=eta).log_prob(b)), value, wake_p, wake_q

    log_q, value, wake_p, wake_q = jax.vmap(one)(CONFIGS)
    q = jnp.exp(log_q)
    return (float(jnp.sum(q * value)),
            np.concatenate([[jnp.sum(q * wake_p)], jnp.sum(q[:, None] * wake_q, axis=0)]))


@pytest.mark.parametrize("per_datapoint", [True, False])
def test_rws_wake_directions_per_point_and_whole_batch_against_enumeration(per_datapoint):
    # Each version is unbiased for its own weights, and the two targets differ: the
    # whole-batch weights let one point's likelihood decide another point's update.
    obj = estimators.rws(dmodel, dguide, KD, per_datapoint=per_datapoint)
    vals, g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(PARAMS, k)))(keys(40_000, 1))
    value, grads = _exact_rws(per_datapoint)
    assert_unbiased(vals, value, f"rws(per_datapoint={per_datapoint}): value")
    got = np.concatenate([np.asarray(g["theta"])[:, None], np.asarray(g["eta"])], axis=1)
    assert_unbiased(got, grads, f"rws(per_datapoint={per_datapoint}): wake-p, wake-q")
    # the test tells the two apart: the other version's target is rejected
    with pytest.raises(AssertionError):
        assert_unbiased(got, _exact_rws(not per_datapoint)[1], "the other target")


def test_rws_value_is_the_per_point_iwae_under_subsampling():
    # RWS monitors the IWAE bound: with a subsampled data plate (scale N/B applied
    # outside the per-point logsumexp) it is the same number iwae computes, tested
    # against NumPyro's RenyiELBO above; only the subsampled points get a gradient.
    params = {"m": X / 2 + 0.6, "s": jnp.asarray(1.2)}
    rws_obj, iwae_obj = estimators.rws(model, guide, 3), estimators.iwae(model, guide, 3)
    rws_step = jax.jit(lambda k: rws_obj.value_and_grad(params, k, X, subsample_size=3))
    iwae_value = jax.jit(lambda k: iwae_obj.estimate(params, k, X, subsample_size=3))
    for key in keys(3, 5):
        (v_rws, g), v_iwae = rws_step(key), iwae_value(key)
        np.testing.assert_allclose(float(v_rws), float(v_iwae), rtol=1e-5)
        assert int(np.sum(np.asarray(g["m"]) != 0)) == 3
