"""Any-order derivatives: ``objective.surrogate`` (DiCE form) against exact Hessians.

Exact answers come from enumerating every discrete site (and closed-form
Gaussian expectations for pathwise ones), differentiated twice by JAX; the
estimates are means of ``jax.hessian(objective.surrogate)`` over fixed keys,
checked with :func:`tests.conftest.assert_unbiased`.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from tests.conftest import assert_unbiased, keys

N = 4000
X = jnp.array([0.7, -0.4, 1.3])


def _hessians(obj, params, n=N, *args):
    run = jax.jit(jax.vmap(lambda k: jax.hessian(obj.surrogate)(params, k, *args)))
    return run(keys(n))


def _grads(obj, params, n=N, *args):
    return jax.jit(jax.vmap(lambda k: jax.grad(obj.surrogate)(params, k, *args)))(keys(n))


def _check_tree(estimates, exact, what):
    flat_e, _ = jax.tree_util.tree_flatten_with_path(estimates)
    flat_x = dict(jax.tree_util.tree_flatten_with_path(exact)[0])
    for path, samples in flat_e:
        assert_unbiased(samples, flat_x[path], f"{what} {jax.tree_util.keystr(path)}")


# -- one Bernoulli site, a model param -------------------------------------------------------

def _one_site():
    def model():
        b = numpyro.sample("b", dist.Bernoulli(0.3))
        w = numpyro.param("w", 0.5)
        numpyro.sample("x", dist.Normal(w * b + 0.2 * w**2, 1.0), obs=1.0)

    def guide():
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", 0.4)))

    def exact(p):
        out = 0.0
        for b in (0.0, 1.0):
            q = dist.Bernoulli(logits=p["l"])
            lp = (dist.Bernoulli(0.3).log_prob(b)
                  + dist.Normal(p["w"] * b + 0.2 * p["w"] ** 2, 1.0).log_prob(1.0))
            out = out + jnp.exp(q.log_prob(b)) * (lp - q.log_prob(b))
        return out

    return model, guide, exact, {"l": jnp.array(0.4), "w": jnp.array(0.5)}


@pytest.mark.parametrize("baseline", [None, pytest.param("loo", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_hessian_one_reinforce_site(baseline):
    model, guide, exact, params = _one_site()
    obj = estimators.elbo(model, handlers.reinforce(guide, baseline=baseline), num_particles=4)
    _check_tree(_hessians(obj, params), jax.hessian(exact)(params), f"Hessian ({baseline})")
    _check_tree(_grads(obj, params), jax.grad(exact)(params), f"gradient ({baseline})")


@pytest.mark.slow
def test_hessian_exact_under_enumerate():
    model, guide, exact, params = _one_site()
    obj = estimators.elbo(model, handlers.enumerate(guide))
    h = jax.hessian(obj.surrogate)(params, jax.random.PRNGKey(0))
    want = jax.hessian(exact)(params)
    for a in params:
        for b in params:
            np.testing.assert_allclose(h[a][b], want[a][b], rtol=1e-5, atol=1e-6)
    hvp = jax.jvp(lambda p: jax.grad(obj.surrogate)(p, jax.random.PRNGKey(1)), (params,),
                  ({"l": jnp.array(1.0), "w": jnp.array(0.0)},))[1]
    np.testing.assert_allclose(hvp["w"], want["w"]["l"], rtol=1e-5, atol=1e-6)


# -- dependent sites, a plate, a pathwise site -----------------------------------------------

def _structured():
    def model(x):
        b1 = numpyro.sample("b1", dist.Bernoulli(0.4))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", 3):
            b2 = numpyro.sample("b2", dist.Bernoulli(logits=0.5 * b1 - 0.2))
            numpyro.sample("x", dist.Normal(b1 + b2 + z, 1.0), obs=x)

    def guide(x):
        b1 = numpyro.sample("b1", dist.Bernoulli(logits=numpyro.param("l1", 0.3)))
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.1), 0.8))
        with numpyro.plate("data", 3):
            numpyro.sample("b2", dist.Bernoulli(logits=numpyro.param("l2", jnp.zeros(3))
                                                + numpyro.param("a", 0.6) * b1))

    def exact(p, x):
        # E_z[log N(x; c + z, 1)] for z ~ N(m, 0.8²): closed form; b1, b2 enumerated.
        s2 = 0.8**2
        ez = (dist.Normal(0.0, 1.0).log_prob(p["m"]) - 0.5 * s2
              - dist.Normal(p["m"], 0.8).entropy())
        out = ez
        for b1, *b2 in itertools.product((0.0, 1.0), repeat=4):
            b2 = jnp.array(b2)
            q1 = dist.Bernoulli(logits=p["l1"]).log_prob(b1)
            q2 = dist.Bernoulli(logits=p["l2"] + p["a"] * b1).log_prob(b2).sum()
            mean = b1 + b2 + p["m"]
            lik = jnp.sum(-0.5 * ((x - mean) ** 2 + s2) - 0.5 * jnp.log(2 * jnp.pi))
            lp = (dist.Bernoulli(0.4).log_prob(b1)
                  + dist.Bernoulli(logits=0.5 * b1 - 0.2).log_prob(b2).sum() + lik)
            out = out + jnp.exp(q1 + q2) * (lp - q1 - q2)
        return out

    params = {"l1": jnp.array(0.3), "m": jnp.array(0.1), "l2": jnp.array([0.2, -0.5, 0.1]),
              "a": jnp.array(0.6)}
    return model, guide, exact, params


@pytest.mark.slow
def test_hessian_dependent_sites_in_a_plate_with_a_pathwise_site():
    model, guide, exact, params = _structured()
    obj = estimators.elbo(model, handlers.reinforce(guide, sites=["b1", "b2"]), num_particles=2)
    _check_tree(_hessians(obj, params, N, X), jax.hessian(exact)(params, X), "Hessian")


@pytest.mark.slow
def test_hessian_of_a_nonlinear_objective():
    # IWAE (K = 2) and VIMCO return a LearningSignal (first-order per-element signals);
    # their higher derivatives are plain DiCE on the scalar bound, which every sample feeds.
    model, guide, _, params = _one_site()

    def exact(p):
        q = dist.Bernoulli(logits=p["l"])
        out = 0.0
        for b in itertools.product((0.0, 1.0), repeat=2):
            b = jnp.array(b)
            lw = (dist.Bernoulli(0.3).log_prob(b)
                  + dist.Normal(p["w"] * b + 0.2 * p["w"] ** 2, 1.0).log_prob(1.0)
                  - q.log_prob(b))
            out = out + jnp.exp(q.log_prob(b).sum()) * (jax.nn.logsumexp(lw) - jnp.log(2.0))
        return out

    exact_hessian = jax.hessian(exact)(params)
    obj = estimators.iwae(model, handlers.reinforce(guide), num_particles=2)
    _check_tree(_hessians(obj, params), exact_hessian, "IWAE Hessian")
    obj = estimators.vimco(model, guide, num_particles=2)
    _check_tree(_hessians(obj, params), exact_hessian, "VIMCO Hessian")


# -- first-order-only strategies are refused ----------------------------------------------------

@pytest.mark.slow
def test_first_order_strategies_are_refused_with_the_site_named():
    model, guide, _, params = _one_site()
    for wrap in (handlers.mvd, handlers.disarm):
        obj = estimators.elbo(model, wrap(guide))
        with pytest.raises(ValueError, match="site 'b'.*first derivatives only"):
            obj.surrogate(params, jax.random.PRNGKey(0))

