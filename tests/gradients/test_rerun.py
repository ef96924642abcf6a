"""MVD by continuation (stackvi.gradients.rerun): unbiased against exact enumeration under
linear (ELBO) and nonlinear (IWAE) objectives, per plate element, and refusals."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from stackvi.gradients import rerun
from tests.conftest import assert_unbiased, per_key

N = 3000
OBS = 1.3


def _chain_model():
    b0 = numpyro.sample("b0", dist.Bernoulli(0.5))
    b1 = numpyro.sample("b1", dist.Bernoulli(0.4))
    b2 = numpyro.sample("b2", dist.Bernoulli(0.3))
    numpyro.sample("x", dist.Normal(b0 + 2.0 * b1 - b2, 1.0), obs=OBS)


def _probs(p, b0, b1):
    r0 = p[0]
    r1 = jnp.where(b0 == 1, 0.8 * p[1], 0.3 + 0.5 * p[1])
    r2 = jnp.where(b1 == 1, p[2], 1.0 - p[2])
    return r0, r1, r2


def _chain_guide():
    p = numpyro.param("p", jnp.array([0.3, 0.6, 0.45]))
    b0 = numpyro.sample("b0", dist.Bernoulli(p[0]))
    b1 = numpyro.sample("b1", dist.Bernoulli(_probs(p, b0, 0.0)[1]))
    numpyro.sample("b2", dist.Bernoulli(_probs(p, b0, b1)[2]))


def _configs(p):
    """(log q, log w) of each of the 8 configurations, in plain JAX."""
    lq, lw = [], []
    for b in itertools.product([0.0, 1.0], repeat=3):
        r = _probs(p, b[0], b[1])
        log_q = sum(jnp.log(ri if bi else 1 - ri) for ri, bi in zip(r, b, strict=True))
        log_p = (dist.Bernoulli(0.5).log_prob(b[0]) + dist.Bernoulli(0.4).log_prob(b[1])
                 + dist.Bernoulli(0.3).log_prob(b[2])
                 + dist.Normal(b[0] + 2 * b[1] - b[2], 1.0).log_prob(OBS))
        lq.append(log_q)
        lw.append(log_p - log_q)
    return jnp.stack(lq), jnp.stack(lw)


def exact_elbo(p):
    lq, lw = _configs(p)
    return jnp.sum(jnp.exp(lq) * lw)


def exact_iwae2(p):
    lq, lw = _configs(p)
    pair = jnp.logaddexp(lw[:, None], lw[None, :]) - jnp.log(2.0)
    return jnp.sum(jnp.exp(lq[:, None] + lq[None, :]) * pair)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["elbo", "iwae"])
def test_dependent_chain_matches_enumeration(kind):
    p = jnp.array([0.3, 0.6, 0.45])
    if kind == "elbo":
        obj, exact = estimators.elbo(_chain_model, handlers.mvd(_chain_guide)), exact_elbo
    else:
        obj = estimators.iwae(_chain_model, handlers.mvd(_chain_guide), num_particles=2)
        exact = exact_iwae2
    values, grads = per_key(obj, {"p": p}, N)
    assert_unbiased(values, exact(p), f"{kind}: value")
    assert_unbiased(grads["p"], jax.grad(exact)(p), f"{kind}: d/dp")


W = jnp.array([1.0, -2.0, 0.5])


def _plated_model():
    with numpyro.plate("data", 3):
        b = numpyro.sample("b", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(W * b + 0.5 * b * b, 1.0), obs=jnp.array([0.8, -1.0, 0.2]))


def _plated_guide():
    t = numpyro.param("t", jnp.array([-0.4, 0.3, 1.1]))
    with numpyro.plate("data", 3):
        numpyro.sample("b", dist.Bernoulli(logits=t))


def _element_lw(t):
    """(2, 3): log q and log w of b_n ∈ {0, 1} per element."""
    x = jnp.array([0.8, -1.0, 0.2])
    out_q, out_w = [], []
    for b in (0.0, 1.0):
        log_q = dist.Bernoulli(logits=t).log_prob(b)
        log_p = dist.Bernoulli(0.5).log_prob(b) + dist.Normal(W * b + 0.5 * b, 1.0).log_prob(x)
        out_q.append(log_q)
        out_w.append(log_p - log_q)
    return jnp.stack(out_q), jnp.stack(out_w)


def plated_elbo(t):
    lq, lw = _element_lw(t)
    return jnp.sum(jnp.exp(lq) * lw)


def plated_iwae2(t):  # per data point: Σ_n E[log ½(w_1n + w_2n)]
    lq, lw = _element_lw(t)
    pair = jnp.logaddexp(lw[:, None], lw[None, :]) - jnp.log(2.0)  # (2, 2, 3)
    return jnp.sum(jnp.exp(lq[:, None] + lq[None, :]) * pair)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["elbo", "iwae"])
def test_plated_site_per_element_cost(kind):
    t = jnp.array([-0.4, 0.3, 1.1])
    if kind == "elbo":
        obj, exact = estimators.elbo(_plated_model, handlers.mvd(_plated_guide)), plated_elbo
    else:
        obj = estimators.iwae(_plated_model, handlers.mvd(_plated_guide), num_particles=2)
        exact = plated_iwae2
    values, grads = per_key(obj, {"t": t}, N)
    assert_unbiased(values, exact(t), f"{kind}: value")
    assert_unbiased(grads["t"], jax.grad(exact)(t), f"{kind}: d/dt")


def test_elbo_on_one_bernoulli_is_exact():
    """One site, no other randomness: f(1) − f(0) is the exact derivative, every key."""

    def model():
        numpyro.sample("b", dist.Bernoulli(0.5))

    def guide():
        numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))

    obj = estimators.elbo(model, handlers.mvd(guide))
    _, grads = per_key(obj, {"p": jnp.asarray(0.3)}, 8)
    exact = jnp.log(0.7 / 0.5) - jnp.log(0.3 / 0.5)  # d/dp of −KL(Bern(p) ‖ Bern(½))
    assert jnp.allclose(grads["p"], exact, rtol=1e-5)
    value, records = obj.run({"p": jnp.asarray(0.3)}, jax.random.PRNGKey(0))
    assert [r.name for r in records] == ["b"] and rerun.is_continuation(records[0])
    assert records[0].axis is None  # no branch axis in the main pass


def _summing_model():
    with numpyro.plate("data", 3):
        b = numpyro.sample("b", dist.Bernoulli(0.5))
    numpyro.sample("y", dist.Normal(jnp.sum(b), 1.0), obs=1.0)  # outside the plate


@pytest.mark.parametrize("kind", ["elbo", "iwae"])
def test_cost_outside_the_plate_is_refused(kind):
    obj = getattr(estimators, kind)(_summing_model, handlers.mvd(_plated_guide),
                                    **({"num_particles": 2} if kind == "iwae" else {}))
    with pytest.raises(ValueError, match=r"term 'p:y' reads site 'b' \(BernoulliLogits, "
                                         r"claimed by mvd\) but lacks its plate\(s\) \['data'\]"):
        obj.value_and_grad({"t": jnp.zeros(3)}, jax.random.PRNGKey(0))


def test_whole_batch_bound_with_a_plated_site_is_refused():
    obj = estimators.iwae(_plated_model, handlers.mvd(_plated_guide), num_particles=2,
                          per_datapoint=False)
    with pytest.raises(ValueError, match=r"site 'b'.*plate\(s\) \['data'\].*per_datapoint"):
        obj.value_and_grad({"t": jnp.zeros(3)}, jax.random.PRNGKey(0))
