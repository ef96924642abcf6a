"""``marginal`` and ``normalize`` on a hierarchical Gaussian guide with a closed-form marginal.

Guide: u ~ N(0, 1), z | u ~ N(a·u + b, s)  ⇒  q(z) = N(b, √(a² + s²)) and
q(u | z) = N(a(z − b)/(a² + s²), s/√(a² + s²)). The reverse model
r(u | z) = N(c·z + d, t) is deliberately not q(u | z), so the estimators have
variance and the checks have teeth.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, trace

from stackvi import estimators
from stackvi.handlers import reinforce
from stackvi.marginal import marginal, normalize
from tests.conftest import assert_unbiased, keys

A, B, S = 1.3, 0.4, 0.7
C, D, T = 0.5, -0.2, 0.9
Z0 = 1.1


def guide():
    u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    numpyro.sample("z", dist.Normal(A * u + B, S))


def reverse(values):
    numpyro.sample("u", dist.Normal(C * values["z"] + D, T))


def exact_reverse(values):
    v = A**2 + S**2
    numpyro.sample("u", dist.Normal(A * (values["z"] - B) / v, S / math.sqrt(v)))


def log_q(z):
    return dist.Normal(B, math.sqrt(A**2 + S**2)).log_prob(z)


@pytest.mark.parametrize("k", [1, 4])
def test_density_estimate_is_unbiased(k):
    q = marginal(guide, reverse, aux=["u"], num_particles=k)
    est = jax.jit(jax.vmap(lambda key: jnp.exp(seed(q.log_density, key)({"z": Z0}))))(keys(4000))
    assert_unbiased(est, math.exp(float(log_q(Z0))), f"q̂(z) with K={k}")


@pytest.mark.parametrize("k", [1, 4])
def test_reciprocal_estimate_is_unbiased_for_one_over_q(k):
    q = marginal(guide, reverse, aux=["u"], num_particles=k)
    v = A**2 + S**2
    post = dist.Normal(A * (Z0 - B) / v, S / math.sqrt(v))  # exact q(u | z0)

    def one(key):
        k1, k2 = jax.random.split(key)
        u1 = post.sample(k1)
        return jnp.exp(-seed(q.reciprocal_log_density, k2)({"z": Z0}, {"u": u1}))

    est = jax.jit(jax.vmap(one))(keys(4000))
    assert_unbiased(est, math.exp(-float(log_q(Z0))), f"1/q̂(z) with K={k}")


def test_sampling_reports_an_unbiased_reciprocal_density():
    # E_{(z,u)~q}[q(z) / q̂(z)] = 1 when the sampled u is kept as a particle.
    q = marginal(guide, reverse, aux=["u"], num_particles=3)

    def one(key):
        values, lq = seed(q.sample_with_log_density, key)()
        return jnp.exp(log_q(values["z"]) - lq)

    assert_unbiased(jax.jit(jax.vmap(one))(keys(4000)), 1.0, "q(z)/q̂(z) at q's samples")


@pytest.mark.slow
def test_exact_reverse_gives_the_exact_density_with_zero_variance():
    q = marginal(guide, exact_reverse, aux=["u"], num_particles=3)
    dens = jax.jit(jax.vmap(lambda key: seed(q.log_density, key)({"z": Z0})))(keys(20))
    np.testing.assert_allclose(dens, log_q(Z0), atol=1e-5)
    recip = jax.jit(jax.vmap(lambda key: seed(q.sample_with_log_density, key)()))(keys(20))
    np.testing.assert_allclose(recip[1], log_q(recip[0]["z"]), atol=1e-5)


def test_score_emits_the_unbiased_estimate_as_a_factor():
    q = marginal(guide, reverse, aux=["u"], num_particles=2, name="q_hat")

    def program():
        return q.score({"z": Z0})

    tr = trace(seed(program, 3)).get_trace()
    direct = seed(q.log_density, 3)({"z": Z0})
    assert list(tr) == ["q_hat"] and tr["q_hat"]["is_observed"]
    np.testing.assert_allclose(tr["q_hat"]["fn"].log_prob(tr["q_hat"]["value"]), direct,
                               rtol=1e-6)


def test_as_a_guide_it_emits_kept_sites_and_its_log_density():
    q = marginal(guide, reverse, aux=["u"], num_particles=2)
    tr = trace(seed(q, 0)).get_trace()
    assert [n for n, s in tr.items() if s["type"] == "sample"] == ["z", "marginal"]
    assert "u" not in tr  # the auxiliary is integrated out, not a site of the marginal


@pytest.mark.slow
@pytest.mark.parametrize("bound", ["iwhvi", "diwhvi"])
def test_strategies_inside_the_marginal_keep_iwhvi_gradients_unbiased(bound):
    """IWHVI / DIWHVI gradients: score-function (inner guide and reverse) vs pathwise agree."""

    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5)

    def pguide():
        m = numpyro.param("m", 0.3)
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("z", dist.Normal(u + m, 0.8))

    def preverse(values):
        numpyro.sample("u", dist.Normal(numpyro.param("c", 0.2) * values["z"], 0.9))

    make = getattr(estimators, bound)
    kw = {"num_aux": 3} if bound == "iwhvi" else {"num_aux": 3, "num_particles": 2}
    path = make(model, pguide, preverse, aux=["u"], **kw)
    score = make(model, reinforce(pguide), reinforce(preverse), aux=["u"], **kw)
    params = path.init(jax.random.PRNGKey(0))

    def grads(obj, n, seed_):
        g = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k)[1]))(keys(n, seed_))
        return np.stack([g["m"], g["c"]], axis=1)

    ref = grads(path, 4000, 1)
    sf = grads(score, 8000, 2)
    diff_se = np.sqrt(ref.var(0, ddof=1) / len(ref) + sf.var(0, ddof=1) / len(sf))
    assert np.all(np.abs(sf.mean(0) - ref.mean(0)) < 4 * diff_se), (sf.mean(0), ref.mean(0))
    # and the score-function run really used score-function nodes
    assert np.mean(sf.var(0)) > 2 * np.mean(ref.var(0))


def test_missing_auxiliary_site_is_a_clear_error():
    q = marginal(guide, reverse, aux=["w"])
    with pytest.raises(ValueError, match="auxiliary site 'w' is not sampled by the guide"):
        seed(q, 0)()


def test_reverse_must_sample_exactly_the_auxiliary_sites():
    def bad_reverse(values):
        numpyro.sample("v", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="must sample exactly the auxiliary sites"):
        seed(marginal(guide, bad_reverse, aux=["u"]), 0)()


def test_num_particles_below_one_is_an_error():
    with pytest.raises(ValueError, match="positive int"):
        marginal(guide, reverse, aux=["u"], num_particles=0)
    with pytest.raises(ValueError, match="positive int"):
        normalize(guide, guide, 0)


@pytest.mark.slow
def test_normalize_evidence_is_unbiased_and_weights_sum_to_one():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)

    def prop():
        numpyro.sample("z", dist.Normal(0.3, 1.5))

    run = normalize(model, prop, 3)
    post = seed(run, 0)()
    np.testing.assert_allclose(post.weights.sum(), 1.0, rtol=1e-5)
    assert post.sample(jax.random.PRNGKey(0))["z"].shape == ()
    evidence = math.exp(float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(1.0)))
    z_hat = jax.jit(jax.vmap(lambda k: jnp.exp(seed(run, k)().log_evidence)))(keys(4000))
    assert_unbiased(z_hat, evidence, "normalize: Ẑ")


@pytest.mark.slow
def test_hvi_value_and_gradient_match_their_closed_form():
    """HVI with Gaussian guide, reverse and model: the bound is a Gaussian expectation of
    a quadratic, E f(v) = f(μ) + ½ tr(∇²f Σ), so its exact gradient is jax.grad of that."""

    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5)

    def hguide():
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("z", dist.Normal(u + numpyro.param("m", 0.3), 0.8))

    def hreverse(values):
        numpyro.sample("u", dist.Normal(numpyro.param("c", 0.2) * values["z"], 0.9))

    def f(v, m, c):  # log p(x, z) − log q(z, u) + log r(u | z)
        u, z = v
        n = dist.Normal
        return (n(0.0, 1.0).log_prob(z) + n(z, 1.0).log_prob(0.5) - n(0.0, 1.0).log_prob(u)
                - n(u + m, 0.8).log_prob(z) + n(c * z, 0.9).log_prob(u))

    def exact(m, c):
        mu, cov = jnp.array([0.0, m]), jnp.array([[1.0, 1.0], [1.0, 1.64]])
        return f(mu, m, c) + 0.5 * jnp.trace(jax.hessian(f)(mu, m, c) @ cov)

    params = {"m": jnp.asarray(0.3), "c": jnp.asarray(0.2)}
    grad = np.asarray(jax.grad(exact, argnums=(0, 1))(params["m"], params["c"]))
    for g, r, n in [(hguide, hreverse, 2000), (reinforce(hguide), reinforce(hreverse), 6000)]:
        obj = estimators.hvi(model, g, r, aux=["u"])
        vals, gr = jax.jit(jax.vmap(obj.value_and_grad, in_axes=(None, 0)))(params, keys(n, 3))
        assert_unbiased(vals, float(exact(params["m"], params["c"])), "HVI value")
        assert_unbiased(np.stack([gr["m"], gr["c"]], 1), grad, "HVI gradient (m, c)")
