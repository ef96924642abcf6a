"""Learned and user-supplied baselines for REINFORCE sites.

* unbiased for the guide's parameters at *any* value of the baseline's parameters
  (z-test against the exact REBAR gradient, DESIGN.md §7);
* the baseline's own gradient is that of −(L − b)², i.e. 2·(E[L] − b), unbiased;
* at its fitted value it lowers the variance (measured, with sampling margin);
* trained jointly by ``sv.fit`` it converges to E[L];
* a network-style ``Learned(fn)`` per plate element, and ``FromFunction``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import stackvi as sv
from stackvi.baselines import FromFunction, Learned
from stackvi.estimators import Objective, elbo
from stackvi.handlers import configure, reinforce, simulate, strategies
from stackvi.terms import Terms, site_log_prob
from tests.conftest import RebarToy, assert_lower_variance, assert_unbiased, keys

N = 3000
T = 0.499


def rebar_guide():
    eta = numpyro.param("eta", 0.0)
    b = numpyro.sample("b", dist.Bernoulli(probs=jax.nn.sigmoid(eta)))
    numpyro.factor("cost", -((b - T) ** 2))


def cost_objective(guide) -> Objective:
    def program():
        return Terms((site_log_prob(simulate(guide)["cost"]),))

    return Objective(program, guide, guide, name="toy")


def per_key(obj, params, n, *args, seed=1):
    return jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, *args)))(keys(n, seed))


def test_learned_baseline_is_unbiased_and_trains_on_squared_error():
    toy = RebarToy(t=T)
    obj = cost_objective(reinforce(rebar_guide, baseline=Learned()))
    params = obj.init(jax.random.PRNGKey(0))
    assert sorted(params) == ["baseline:b", "eta"]
    for b0 in (0.7, -0.25):  # far from and near E[L] = value
        p = {"eta": jnp.float32(0.3), "baseline:b": jnp.float32(b0)}
        values, grads = per_key(obj, p, N)
        assert_unbiased(values, toy.value(0.3), "value")
        assert_unbiased(grads["eta"], toy.grad(0.3), f"d/d eta at b = {b0}")
        assert_unbiased(grads["baseline:b"], 2 * (toy.value(0.3) - b0), "d/db")


def test_learned_baseline_lowers_variance_at_its_fitted_value():
    p = {"eta": jnp.float32(0.3)}
    _, plain = per_key(cost_objective(reinforce(rebar_guide)), p, N)
    fitted = {**p, "baseline:b": jnp.float32(RebarToy(t=T).value(0.3))}
    _, learned = per_key(cost_objective(reinforce(rebar_guide, baseline=Learned())), fitted, N)
    ratio = assert_lower_variance(learned["eta"], plain["eta"], "learned vs none")
    assert ratio > 100  # L varies by 0.002 around E[L] ≈ −0.25: the baseline removes ~all


def test_fit_trains_baseline_jointly():
    obj = cost_objective(strategies(rebar_guide, {"reinforce": ["b"]},
                                    reinforce={"baseline": Learned(init=0.5)}))
    result = sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.adam(0.05), num_steps=400,
                    progress=False)
    eta = float(result.params["eta"])
    expected = RebarToy(t=T).value(eta)
    assert abs(float(result.params["baseline:b"]) - expected) < 0.02


@pytest.mark.slow
def test_network_baseline_per_plate_element_and_from_function():
    x = jnp.array([0.2, 1.5, -1.0, 0.7])

    def model(x):
        with numpyro.plate("data", 4):
            b = numpyro.sample("b", dist.Bernoulli(0.4))
            numpyro.sample("x", dist.Normal(2.0 * b - 0.5, 1.0), obs=x)

    def guide(x):
        t = numpyro.param("t", jnp.array([0.1, -0.3, 0.4, 0.0]))
        with numpyro.plate("data", 4):
            numpyro.sample("b", dist.Bernoulli(probs=jax.nn.sigmoid(t)))

    def per_element(t):  # E[L_n]: the exact ELBO of each element
        q1 = jax.nn.sigmoid(t)
        out = 0.0
        for b, q, prior in ((1.0, q1, 0.4), (0.0, 1 - q1, 0.6)):
            lik = dist.Normal(2.0 * b - 0.5, 1.0).log_prob(x)
            out = out + q * (jnp.log(prior) + lik - jnp.log(q))
        return out

    def exact(t):
        return jnp.sum(per_element(t))

    def net(site):  # a linear "network" of the data, one output per element
        w = numpyro.param("bw", jnp.array([0.5, -1.0]))
        return w[0] * x + w[1]

    t0 = jnp.array([0.1, -0.3, 0.4, 0.0])
    g_exact = jax.grad(exact)(t0)
    for baseline, extra in [(Learned(net), {"bw": jnp.array([0.5, -1.0])}),
                            (FromFunction(lambda site: -1.5 * jnp.ones(4)), {})]:
        g = configure(guide, lambda site, b=baseline: ("reinforce", {"baseline": b}))
        obj = elbo(model, g)
        assert sorted(obj.init(jax.random.PRNGKey(0), x)) == sorted({"t", *extra})
        _, grads = per_key(obj, {"t": t0, **extra}, N, x)
        assert_unbiased(grads["t"], g_exact, f"{baseline!r}")
        if extra:  # the network's gradient is that of −Σ_n (L_n − b_n)²: 2Σ_n (E L_n − b_n) ∂b_n
            w = extra["bw"]
            resid = per_element(t0) - (w[0] * x + w[1])
            assert_unbiased(grads["bw"], 2 * jnp.array([jnp.sum(resid * x), jnp.sum(resid)]),
                            "network baseline gradient")


def test_learned_baseline_in_an_infer_dict_is_a_clear_error():
    import pytest

    def guide():
        eta = numpyro.param("eta", 0.0)
        b = numpyro.sample("b", dist.Bernoulli(probs=jax.nn.sigmoid(eta)),
                           infer={"strategy": "reinforce", "baseline": Learned()})
        numpyro.factor("cost", -((b - T) ** 2))

    obj = cost_objective(guide)
    with pytest.raises(ValueError, match="'b': a trained baseline.*attach it with a handler"):
        obj.value_and_grad(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
