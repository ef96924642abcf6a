"""Regression tests for issue 9's findings, each against an exact answer computed by hand.

Exact answers come from closed forms or brute-force enumeration in plain JAX,
never from stackvi. Stochastic estimators use the z-test of tests/conftest.py.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.contrib.funsor import config_enumerate

from stackvi import estimators, handlers
from stackvi.estimators import Objective
from stackvi.handlers import simulate, trace_terms
from tests.conftest import assert_unbiased, keys, per_key

N = 4000


def _estimates(obj, params, n, *args):
    return jax.jit(jax.vmap(lambda k: obj.estimate(params, k, *args)))(keys(n))


# -- finding 1: scale outside the sum (subsampling) -------------------------------------------

def test_model_enumeration_scale_outside_sum():
    x = jnp.array([-2.1, -1.5, 0.3, 1.9, 2.4, 3.0])

    def model(x):
        with numpyro.plate("data", 6, subsample_size=3) as idx:
            k = numpyro.sample("k", dist.Bernoulli(0.3))
            numpyro.sample("x", dist.Normal(jnp.where(k == 1, 2.0, -1.0), 1.0), obs=x[idx])

    exact = jnp.sum(jnp.logaddexp(jnp.log(0.3) + dist.Normal(2.0, 1).log_prob(x),
                                  jnp.log(0.7) + dist.Normal(-1.0, 1).log_prob(x)))
    obj = estimators.elbo(model, lambda x: None)
    assert_unbiased(_estimates(obj, {}, N, x), exact, "subsampled log p(x)")


def test_model_enumeration_multi_scale_is_an_error():
    def model():
        c = numpyro.sample("c", dist.Bernoulli(0.5))
        with numpyro.handlers.scale(scale=2.0):
            numpyro.sample("x", dist.Normal(c, 1.0), obs=0.3)

    obj = estimators.elbo(model, lambda: None)
    with pytest.raises(ValueError, match="common scale"):
        obj.estimate({}, jax.random.PRNGKey(0))


# -- finding 2: config_enumerate on the model never re-enumerates guide sites ------------------

@pytest.mark.parametrize("strategy", ["reinforce", "enumerate"])
def test_config_enumerate_model_keeps_guide_sample(strategy):
    @config_enumerate
    def model():
        c = numpyro.sample("c", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(3.0 * c, 1.0), obs=2.5)

    def guide():
        numpyro.sample("c", dist.Bernoulli(numpyro.param("q", 0.3)))

    def exact(q):
        lp = jnp.array([dist.Normal(0.0, 1.0).log_prob(2.5), dist.Normal(3.0, 1.0).log_prob(2.5)])
        w = jnp.array([1 - q, q])
        return jnp.sum(w * (jnp.log(0.5) + lp - jnp.log(w)))

    wrap = handlers.reinforce if strategy == "reinforce" else handlers.enumerate
    obj = estimators.elbo(model, wrap(guide))
    params = obj.init(jax.random.PRNGKey(0))
    values, grads = per_key(obj, params, N)
    assert_unbiased(values, exact(0.3), "ELBO")
    assert_unbiased(grads["q"], jax.grad(exact)(0.3), "dELBO/dq")


# -- findings 3 and 4: several MVD sites, size-1 axes ---------------------------------------

def _bern_guide():
    def guide():
        b1 = numpyro.sample("b1", dist.Bernoulli(numpyro.param("p1", 0.3)))
        numpyro.sample("b2", dist.Bernoulli(0.2 + numpyro.param("p2", 0.6) * 0.5 + 0.0 * b1))

    return guide


@pytest.mark.parametrize("strategy", ["mvd", "enumerate", "reinforce"])
def test_two_sites_one_strategy(strategy):
    guide = _bern_guide()

    def model():
        b1 = numpyro.sample("b1", dist.Bernoulli(0.5))
        b2 = numpyro.sample("b2", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(b1 + 2.0 * b2, 1.0), obs=1.7)

    def exact(p1, p2):
        r2 = 0.2 + 0.5 * p2
        out = 0.0
        for b1, b2 in itertools.product([0.0, 1.0], repeat=2):
            q = (p1 if b1 else 1 - p1) * (r2 if b2 else 1 - r2)
            lp = (dist.Bernoulli(0.5).log_prob(b1) + dist.Bernoulli(0.4).log_prob(b2)
                  + dist.Normal(b1 + 2 * b2, 1.0).log_prob(1.7))
            out = out + q * (lp - jnp.log(q))
        return out

    wrap = {"mvd": handlers.mvd, "enumerate": handlers.enumerate,
            "reinforce": handlers.reinforce}[strategy]
    obj = estimators.elbo(model, wrap(guide))
    params = {"p1": jnp.array(0.3), "p2": jnp.array(0.6)}
    values, grads = per_key(obj, params, N)
    g1, g2 = jax.grad(exact, argnums=(0, 1))(0.3, 0.6)
    assert np.all(np.isfinite(grads["p1"])) and np.all(np.isfinite(grads["p2"]))
    assert_unbiased(values, exact(0.3, 0.6), "ELBO")
    assert_unbiased(grads["p1"], g1, "d/dp1")
    assert_unbiased(grads["p2"], g2, "d/dp2")


def test_mvd_site_depending_on_mvd_site():
    def model():
        b1 = numpyro.sample("b1", dist.Bernoulli(0.5))
        b2 = numpyro.sample("b2", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(b1 + 2.0 * b2, 1.0), obs=1.7)

    def guide():
        b1 = numpyro.sample("b1", dist.Bernoulli(numpyro.param("p1", 0.3)))
        numpyro.sample("b2", dist.Bernoulli(jnp.where(b1 == 1, 0.8, numpyro.param("p2", 0.6))))

    def exact(p1, p2):
        out = 0.0
        for b1, b2 in itertools.product([0.0, 1.0], repeat=2):
            r2 = 0.8 if b1 else p2
            q = (p1 if b1 else 1 - p1) * (r2 if b2 else 1 - r2)
            lp = (dist.Bernoulli(0.5).log_prob(b1) + dist.Bernoulli(0.4).log_prob(b2)
                  + dist.Normal(b1 + 2 * b2, 1.0).log_prob(1.7))
            out = out + q * (lp - jnp.log(q))
        return out

    for wrap in (handlers.mvd, handlers.enumerate):
        obj = estimators.elbo(model, wrap(guide))
        params = {"p1": jnp.array(0.3), "p2": jnp.array(0.6)}
        values, grads = per_key(obj, params, N)
        g1, g2 = jax.grad(exact, argnums=(0, 1))(0.3, 0.6)
        assert_unbiased(values, exact(0.3, 0.6), f"{wrap.__name__} ELBO")
        assert_unbiased(grads["p1"], g1, f"{wrap.__name__} d/dp1")
        assert_unbiased(grads["p2"], g2, f"{wrap.__name__} d/dp2")


# -- finding 5: the documented custom pattern gets plate pooling; one model scoring ---------

def _pooling_model():
    x = 1.3

    def model():
        with numpyro.plate("i", 3):
            numpyro.sample("b", dist.Bernoulli(0.5))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide():
        with numpyro.plate("i", 3):
            b = numpyro.sample("b", dist.Bernoulli(numpyro.param("p", jnp.array([0.2, 0.5, 0.7]))))
        numpyro.sample("z", dist.Normal(3.0 * jnp.mean(b), 1.0))

    def exact(p):
        out = 0.0
        for bs in itertools.product([0.0, 1.0], repeat=3):
            b = jnp.array(bs)
            logq_b = jnp.sum(jnp.where(b == 1, jnp.log(p), jnp.log1p(-p)))
            m = 3.0 * jnp.mean(b)
            # E_z~N(m,1)[log N(z;0,1) + log N(x;z,1) - log N(z;m,1)]
            c = -0.5 * jnp.log(2 * jnp.pi)
            inner = (c - (m**2 + 1) / 2) + (c - ((x - m) ** 2 + 1) / 2) - (c - 0.5)
            out = out + jnp.exp(logq_b) * (3 * jnp.log(0.5) - logq_b + inner)
        return out

    return model, guide, exact


def test_custom_objective_as_documented_is_unbiased():
    model, guide, exact = _pooling_model()

    def program():
        guide_trace = simulate(guide)
        model_trace = estimators.score_model(model, guide_trace)
        return trace_terms(model_trace, prefix="p:") - trace_terms(guide_trace, prefix="q:")

    obj = Objective(program, model, guide)
    p = jnp.array([0.2, 0.5, 0.7])
    params = obj.init(jax.random.PRNGKey(0))
    _, grads = per_key(obj, params, 20000)
    assert_unbiased(grads["p"], jax.grad(exact)(p), "custom-program gradient")


@pytest.mark.slow
def test_dreg_and_rws_score_summed_out_latents_like_iwae():
    def model():
        c = numpyro.sample("c", dist.Bernoulli(0.3))
        z = numpyro.sample("z", dist.Normal(2.0 * c, 1.0))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=1.5)

    def guide():
        numpyro.sample("z", dist.Normal(numpyro.param("m", 1.0), 0.6))

    k = 4
    vals = {}
    for name, make in [("iwae", estimators.iwae), ("dreg", estimators.dreg),
                       ("rws", estimators.rws)]:
        obj = make(model, guide, num_particles=k)
        vals[name] = np.asarray(_estimates(obj, obj.init(jax.random.PRNGKey(0)), 2000))
    # same K, same keys: the same IWAE estimate (not a different model density)
    np.testing.assert_allclose(vals["dreg"], vals["iwae"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(vals["rws"].mean(), vals["iwae"].mean(),
                               atol=4 * vals["iwae"].std() / np.sqrt(2000) * 2)


# -- finding 6: discrete guide sites inside NumPyro's scan keep their score term ------------

def test_discrete_guide_sites_inside_scan():
    ys = jnp.array([0.9, -0.2, 1.4])

    def model():
        def step(carry, y):
            b = numpyro.sample("b", dist.Bernoulli(0.5))
            numpyro.sample("y", dist.Normal(2.0 * b, 1.0), obs=y)
            return carry, None

        scan(step, None, ys)

    def guide():
        p = numpyro.param("p", 0.4)

        def step(carry, _):
            numpyro.sample("b", dist.Bernoulli(p))
            return carry, None

        scan(step, None, None, length=3)

    def exact(p):
        out = 0.0
        for y in ys:
            for b in (0.0, 1.0):
                q = p if b else 1 - p
                out = out + q * (jnp.log(0.5) + dist.Normal(2 * b, 1.0).log_prob(y) - jnp.log(q))
        return out

    obj = estimators.elbo(model, guide)
    params = obj.init(jax.random.PRNGKey(0))
    values, grads = per_key(obj, params, N)
    assert_unbiased(values, exact(0.4), "ELBO with scan")
    assert_unbiased(grads["p"], jax.grad(exact)(0.4), "gradient with scan")


# -- finding 7: a user's own jax.vmap over a program is a clear error ------------------------

def test_user_vmap_is_a_clear_error():
    def model():
        numpyro.sample("b", dist.Bernoulli(0.5))

    def guide():
        numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))

    def program():
        ks = jax.random.split(numpyro.prng_key(), 4)
        lw = jax.vmap(lambda k: numpyro.handlers.seed(estimators.log_weight(model, guide), k)()
                      .total())(ks)
        return jnp.mean(lw)

    obj = Objective(program, model, guide)
    with pytest.raises(ValueError, match="particles"):
        obj.value_and_grad(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))


# -- finding 8: exact gradients at logits = 0 (the ARM toy) -----------------------------------

P_ARM = jnp.array([0.49, 0.499, 0.501, 0.51])
ARM_EXACT = jnp.array([0.005, 0.0005, -0.0005, -0.005])


def test_arm_toy_at_logits_zero_exact_under_enumerate():
    obj = estimators.elbo(_arm_model, handlers.enumerate(_arm_guide))
    _, grads = obj.value_and_grad({"eta": jnp.zeros(4)}, jax.random.PRNGKey(0))
    # ELBO = -Σ E(b-p)² + E[log p_flat(b) - log q(b)]; the entropy part's gradient is 0 at η=0
    np.testing.assert_allclose(grads["eta"], -ARM_EXACT, atol=1e-6)


@pytest.mark.parametrize("wrap", [handlers.reinforce, handlers.mvd])
def test_arm_toy_at_logits_zero_unbiased(wrap):
    obj = estimators.elbo(_arm_model, wrap(_arm_guide))
    _, grads = per_key(obj, {"eta": jnp.zeros(4)}, 100000)
    assert_unbiased(grads["eta"], -ARM_EXACT, f"{wrap.__name__} ARM gradient at η=0")


def _arm_model():
    with numpyro.plate("i", 4):
        b = numpyro.sample("b", dist.Bernoulli(0.5))
        # the cost; the flat prior cancels q's entropy gradient at η = 0 (both are symmetric)
        numpyro.factor("cost", -(b - P_ARM) ** 2)


def _arm_guide():
    with numpyro.plate("i", 4):
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("eta", jnp.zeros(4))))


# -- finding 9: a plate named "particles" ----------------------------------------------------

def test_user_plate_named_particles():
    def make(plate):
        def model(x):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            with numpyro.plate(plate, 3):
                numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

        def guide(x):
            numpyro.sample("z", dist.Normal(numpyro.param("m", 0.2), 1.0))

        return model, guide

    x = jnp.array([0.5, 1.0, -0.3])
    out = []
    for plate in ("particles", "data"):
        for make_obj in (estimators.elbo, estimators.iwae):
            obj = make_obj(*make(plate), num_particles=3)
            out.append(obj.value_and_grad({"m": jnp.array(0.2)}, jax.random.PRNGKey(0), x))
    for a, b in zip(out[:2], out[2:], strict=True):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
        np.testing.assert_allclose(a[1]["m"], b[1]["m"], rtol=1e-6)


# -- finding 10 ------------------------------------------------------------------------------

def test_reinforce_site_downstream_of_enumerated_site():
    def model():
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        b = numpyro.sample("b", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(z + b, 1.0), obs=1.2)

    def guide():
        z = numpyro.sample("z", dist.Bernoulli(numpyro.param("pz", 0.6)),
                           infer={"strategy": "enumerate"})
        numpyro.sample("b", dist.Bernoulli(jnp.where(z == 1, 0.7, numpyro.param("pb", 0.4))),
                       infer={"strategy": "reinforce"})

    def exact(pz, pb):
        out = 0.0
        for z, b in itertools.product([0.0, 1.0], repeat=2):
            rb = 0.7 if z else pb
            q = (pz if z else 1 - pz) * (rb if b else 1 - rb)
            lp = (jnp.log(0.5) + dist.Bernoulli(0.3).log_prob(b)
                  + dist.Normal(z + b, 1.0).log_prob(1.2))
            out = out + q * (lp - jnp.log(q))
        return out

    obj = estimators.elbo(model, guide)
    params = {"pz": jnp.array(0.6), "pb": jnp.array(0.4)}
    values, grads = per_key(obj, params, N)
    gz, gb = jax.grad(exact, argnums=(0, 1))(0.6, 0.4)
    assert_unbiased(values, exact(0.6, 0.4), "ELBO")
    assert_unbiased(grads["pz"], gz, "d/dpz")
    assert_unbiased(grads["pb"], gb, "d/dpb")


def test_jit_enumerate_param_from_numpy_indexed_by_sample():
    table = np.array([0.2, 0.9])

    def model():
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.4)

    def guide():
        z = numpyro.sample("z", dist.Bernoulli(numpyro.param("p", 0.4)))
        numpyro.param("t", table[np.asarray(z, dtype=int)])  # NumPy indexing by the sample

    obj = estimators.elbo(model, handlers.enumerate(guide))
    params = {"p": jnp.array(0.4), "t": jnp.array(0.2)}
    value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(0))
    assert np.isfinite(value) and np.isfinite(grads["p"])


# -- finding 11: the surrogate grows linearly with the number of score-function sites --------

def _many_sites(n):
    def model():
        for i in range(n):
            b = numpyro.sample(f"b{i}", dist.Bernoulli(0.5))
            numpyro.sample(f"x{i}", dist.Normal(b, 1.0), obs=0.3)

    def guide():
        for i in range(n):
            numpyro.sample(f"b{i}", dist.Bernoulli(logits=numpyro.param(f"l{i}", 0.1)))

    return model, guide


def test_surrogate_size_linear_in_sites():
    sizes = []
    for n in (10, 20, 40):
        obj = estimators.elbo(*_many_sites(n))
        params = {f"l{i}": jnp.array(0.1) for i in range(n)}
        jaxpr = jax.make_jaxpr(obj.value_and_grad)(params, jax.random.PRNGKey(0))
        sizes.append(len(jaxpr.jaxpr.eqns))
    # doubling the sites at most ~doubles the program (quadratic would quadruple it)
    assert sizes[2] / sizes[1] < 2.3 and sizes[1] / sizes[0] < 2.3, sizes


def _hlo_instructions(text):
    return len(re.findall(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=", text, re.MULTILINE))


@pytest.mark.slow
def test_compiled_module_linear_in_sites():
    # A linear jaxpr is not enough: XLA may recompute a shared elementwise producer in
    # every consumer (it did, for the learning signals' 0/1 product), so count the
    # instructions of the optimized module XLA actually compiles.
    sizes = []
    for n in (6, 12, 24):
        obj = estimators.elbo(*_many_sites(n))
        params = {f"l{i}": jnp.array(0.1) for i in range(n)}
        lowered = jax.jit(obj.value_and_grad).lower(params, jax.random.PRNGKey(0))
        sizes.append(_hlo_instructions(lowered.compile().as_text()))
    assert sizes[2] / sizes[1] < 2.3 and sizes[1] / sizes[0] < 2.3, sizes


# -- model-side and guide-side enumeration together; a guide site under a summed-out one ---

def test_model_and_guide_enumeration_together():
    def model():
        c = numpyro.sample("c", dist.Bernoulli(0.3))  # summed out in the model
        z = numpyro.sample("z", dist.Bernoulli(jnp.where(c == 1, 0.8, 0.4)))  # guide enumerates
        numpyro.sample("x", dist.Normal(z + c, 1.0), obs=1.1)

    def guide():
        numpyro.sample("z", dist.Bernoulli(numpyro.param("q", 0.5)))

    def exact(q):
        out = 0.0
        for z in (0.0, 1.0):
            lp = jnp.logaddexp(
                jnp.log(0.7) + dist.Bernoulli(0.4).log_prob(z) + dist.Normal(z, 1.0).log_prob(1.1),
                jnp.log(0.3) + dist.Bernoulli(0.8).log_prob(z)
                + dist.Normal(z + 1, 1.0).log_prob(1.1))
            w = q if z else 1 - q
            out = out + w * (lp - jnp.log(w))
        return out

    for wrap in (handlers.enumerate, handlers.reinforce, handlers.mvd):
        obj = estimators.elbo(model, wrap(guide))
        values, grads = per_key(obj, {"q": jnp.array(0.5)}, N)
        assert_unbiased(values, exact(0.5), f"{wrap.__name__} ELBO")
        assert_unbiased(grads["q"], jax.grad(exact)(0.5), f"{wrap.__name__} gradient")


def test_summed_out_site_in_a_plate_of_size_one():
    # Pyro's enumerate_plate_3 with one data point: funsor drops size-1 dims, and the
    # marginal term lost its plate, then looked independent of the guide's enumerated
    # site laid out along that plate (a false "not along its plate" error).
    def model():
        with numpyro.plate("data", 1):
            z = numpyro.sample("z", dist.Bernoulli(0.4))  # guide enumerates
            c = numpyro.sample("c", dist.Bernoulli(jnp.where(z == 1, 0.8, 0.3)),
                               infer={"enumerate": "parallel"})  # summed out in the model
            numpyro.sample("x", dist.Normal(z + c, 1.0), obs=jnp.array([1.1]))

    def guide():
        with numpyro.plate("data", 1):
            numpyro.sample("z", dist.Bernoulli(numpyro.param("q", 0.6)))

    def exact(q):
        out = 0.0
        for z in (0.0, 1.0):
            pc = 0.8 if z else 0.3
            lp = jnp.log(0.4 if z else 0.6) + jnp.logaddexp(
                jnp.log(1 - pc) + dist.Normal(z, 1.0).log_prob(1.1),
                jnp.log(pc) + dist.Normal(z + 1, 1.0).log_prob(1.1))
            w = q if z else 1 - q
            out = out + w * (lp - jnp.log(w))
        return out

    obj = estimators.elbo(model, handlers.enumerate(guide))
    value, grads = obj.value_and_grad({"q": jnp.array(0.6)}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(value, exact(0.6), rtol=1e-5)
    np.testing.assert_allclose(grads["q"], jax.grad(exact)(0.6), rtol=1e-4)


@pytest.mark.slow
def test_guide_site_whose_model_density_depends_on_summed_out_site():
    mu = jnp.array([-1.0, 2.0])

    def model():
        c = numpyro.sample("c", dist.Categorical(jnp.array([0.4, 0.6])))
        z = numpyro.sample("z", dist.Normal(mu[c], 1.0))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=1.0)

    def guide():
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.5), 0.7))

    obj = estimators.elbo(model, guide)
    value = obj.estimate({"m": jnp.array(0.5)}, jax.random.PRNGKey(0))
    assert np.isfinite(value)
    # exact: E_z[log Σ_c p(c) N(z; mu_c, 1) N(x; z, .5) − log q(z)] by Gauss–Hermite
    t, w = np.polynomial.hermite_e.hermegauss(60)
    zs = 0.5 + 0.7 * t
    lp = jax.nn.logsumexp(jnp.log(jnp.array([0.4, 0.6]))[:, None]
                          + dist.Normal(mu[:, None], 1.0).log_prob(zs), axis=0)
    f = lp + dist.Normal(zs, 0.5).log_prob(1.0) - dist.Normal(0.5, 0.7).log_prob(zs)
    exact = float(np.sum(w * f) / np.sqrt(2 * np.pi))
    assert_unbiased(_estimates(obj, {"m": jnp.array(0.5)}, N), exact, "ELBO")


# -- deliverable 5: clear errors ----------------------------------------------------------------

def _simple():
    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", 5):
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))

    return model, guide


def test_clear_errors():
    model, guide = _simple()
    with pytest.raises(ValueError, match="guide must be a function"):
        estimators.elbo(model, None)
    obj = estimators.elbo(model, guide)
    with pytest.raises(ValueError, match="plate's size must equal"):
        obj.estimate({"m": jnp.array(0.0)}, jax.random.PRNGKey(0), jnp.ones(3))
    with pytest.raises(ValueError, match=r"entries \['typo'\]"):
        obj.estimate({"m": jnp.array(0.0), "typo": jnp.array(1.0)}, jax.random.PRNGKey(0),
                     jnp.ones(5))
    assert estimators.elbo(model, guide, num_particles=np.int64(4)).info["num_particles"] == 4
    with pytest.raises(ValueError, match="positive int"):
        estimators.elbo(model, guide, num_particles=True)
    obj = estimators.elbo(model, handlers.reinforce(guide, sites=["q"]))
    with pytest.raises(ValueError, match=r"\['q'\] never appear"):
        obj.estimate({"m": jnp.array(0.0)}, jax.random.PRNGKey(0), jnp.ones(5))


def test_enumerate_under_iwae_is_unbiased():
    """Once a clear error (no per-site contraction of a logsumexp exists); now the value is at
    a sample and the derivative is summed over the support by re-runs (gradients/rerun.py)."""

    def model():
        numpyro.sample("b", dist.Bernoulli(0.5))

    def guide():
        numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))

    def exact(p):
        out = 0.0
        for bs in itertools.product([0.0, 1.0], repeat=3):
            q = [p if b else 1 - p for b in bs]
            lw = jnp.stack([jnp.log(0.5) - jnp.log(qi) for qi in q])
            out = out + q[0] * q[1] * q[2] * (jax.nn.logsumexp(lw) - jnp.log(3.0))
        return out

    obj = estimators.iwae(model, handlers.enumerate(guide), num_particles=3)
    values, grads = per_key(obj, {"p": jnp.array(0.3)}, N)
    assert_unbiased(values, exact(0.3), "IWAE value")
    assert_unbiased(grads["p"], jax.grad(exact)(0.3), "IWAE d/dp")


def test_enumerated_site_downstream_of_mvd_site():
    """The paper's hybrid: MVD on the first step, enumeration on the next, which depends on it."""

    def model():
        b0 = numpyro.sample("b0", dist.Bernoulli(0.5))
        b1 = numpyro.sample("b1", dist.Bernoulli(jnp.where(b0 == 1, 0.6, 0.2)))
        numpyro.sample("x", dist.Normal(b0 + 2.0 * b1, 1.0), obs=1.4)

    def guide():
        b0 = numpyro.sample("b0", dist.Bernoulli(numpyro.param("p0", 0.3)))
        numpyro.sample("b1", dist.Bernoulli(jnp.where(b0 == 1, numpyro.param("p1", 0.7), 0.4)))

    def exact(p0, p1):
        out = 0.0
        for b0, b1 in itertools.product([0.0, 1.0], repeat=2):
            r1 = p1 if b0 else 0.4
            q = (p0 if b0 else 1 - p0) * (r1 if b1 else 1 - r1)
            m1 = 0.6 if b0 else 0.2
            lp = (jnp.log(0.5) + (jnp.log(m1) if b1 else jnp.log1p(-m1))
                  + dist.Normal(b0 + 2 * b1, 1.0).log_prob(1.4))
            out = out + q * (lp - jnp.log(q))
        return out

    guide = handlers.enumerate(handlers.mvd(guide, sites=["b0"]), sites=["b1"])
    obj = estimators.elbo(model, guide)
    params = {"p0": jnp.array(0.3), "p1": jnp.array(0.7)}
    values, grads = per_key(obj, params, N)
    g0, g1 = jax.grad(exact, argnums=(0, 1))(0.3, 0.7)
    assert_unbiased(values, exact(0.3, 0.7), "ELBO")
    assert_unbiased(grads["p0"], g0, "d/dp0 (mvd)")
    assert_unbiased(grads["p1"], g1, "d/dp1 (enumerate)")


# -- peer re-run (Pyro test_valid_models): summed-out sites sharing one ``infer`` dict ---------

@pytest.mark.slow
def test_summed_out_sites_sharing_one_infer_dict():
    """NumPyro passes the user's ``infer`` dict through and funsor writes each site's dims
    into it; the sum over ``a`` once read ``c``'s dims and silently dropped ``log p(a)``."""
    infer = {"enumerate": "parallel"}  # one dict object for both sites

    def model():
        p = numpyro.param("p", jnp.array([0.2, 0.8]))
        a = numpyro.sample("a", dist.Bernoulli(0.3), infer=infer).astype(jnp.int32)
        with numpyro.plate("b_axis", 2):
            numpyro.sample("b", dist.Bernoulli(p[a]), obs=jnp.array([0.0, 1.0]))
        c = numpyro.sample("c", dist.Bernoulli(0.3), infer=infer).astype(jnp.int32)
        with numpyro.plate("c_axis", 2):
            numpyro.sample("d", dist.Bernoulli(p[c]), obs=jnp.array([0.0, 0.0]))

    def exact(p):  # log Σ_a p(a) p(b | a) + log Σ_c p(c) p(d | c)
        prior = jnp.array([0.7, 0.3])
        return (jnp.log(jnp.sum(prior * (1 - p) * p))
                + jnp.log(jnp.sum(prior * (1 - p) ** 2)))

    p = jnp.array([0.2, 0.8])
    obj = estimators.elbo(model, lambda: None)
    for fn in (obj.value_and_grad, jax.jit(obj.value_and_grad)):
        value, grads = fn({"p": p}, jax.random.PRNGKey(0))
        np.testing.assert_allclose(value, exact(p), rtol=1e-5)
        np.testing.assert_allclose(grads["p"], jax.grad(exact)(p), rtol=1e-5, atol=1e-6)
    assert infer == {"enumerate": "parallel"}  # the user's dict is left alone


def test_intractable_model_enumeration_names_sites_and_plates():
    """Summed-out sites in two crossed plates that meet in one factor (NumPyro's and Pyro's
    plates_6 ``model_plate_plate``): their TraceEnum_ELBO raises too; ours names the sites."""

    def model():
        a = numpyro.sample("a", dist.Bernoulli(0.4)).astype(jnp.int32)
        with numpyro.plate("b_axis", 2, dim=-1):
            b = numpyro.sample("b", dist.Bernoulli(jnp.array([0.3, 0.6])[a]))
        with numpyro.plate("c_axis", 2, dim=-2):
            c = numpyro.sample("c", dist.Bernoulli(jnp.array([0.2, 0.7])[a]))
        with numpyro.plate("b_axis", 2, dim=-1), numpyro.plate("c_axis", 2, dim=-2):
            numpyro.sample("d", dist.Normal(b + c, 1.0), obs=jnp.zeros((2, 2)))

    obj = estimators.elbo(model, lambda: None)
    with pytest.raises(ValueError, match=r"\['a', 'b', 'c'\] over plates \['b_axis', "
                                         r"'c_axis'\] is intractable"):
        obj.estimate({}, jax.random.PRNGKey(0))


# -- peer re-run (GenJAX flip_batched): a guide-only program checks plate dims too -------------

@pytest.mark.parametrize("wrap", [handlers.enumerate, handlers.mvd])
def test_laid_out_dim_summed_in_guide_only_program_is_an_error(wrap):
    """A program that never scores a model (the cost a guide factor, as ADEV writes it) once
    summed a plated site's enumerated/branch dim into the plate's: gradient 0, silently."""
    from stackvi.handlers import enum_scope
    from stackvi.terms import Terms, site_log_prob

    def guide():
        q = numpyro.param("q", jnp.array([0.2, 0.7]))
        with numpyro.plate("batch", 2):
            x = numpyro.sample("x", dist.Bernoulli(q))
        numpyro.factor("cost", jnp.sum(x, -1))  # should be keepdims / inside the plate

    g = wrap(guide, sites=["x"])

    def program():
        with enum_scope(g, g):
            return Terms((site_log_prob(simulate(g)["cost"]),))

    obj = Objective(program, g, g)
    # mvd branches by continuation: no dim to misalign, the data-flow check names the term
    match = ("term 'cost' reads site 'x'.*lacks its plate" if wrap is handlers.mvd
             else "site 'cost'.*no plate declares it")
    with pytest.raises(ValueError, match=match):
        obj.value_and_grad({"q": jnp.array([0.2, 0.7])}, jax.random.PRNGKey(0))


# -- a model that indexes a branched site without Vindex gets a clear error ---------------------

@pytest.mark.slow
def test_branched_vector_site_indexed_without_vindex_is_a_clear_error():
    x = jnp.array([-2.0, 0.1, 2.5, 1.0])

    def model(x):
        locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Categorical(jnp.ones(3) / 3))
            numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)  # Vindex(locs)[..., z] works

    def guide(x):
        numpyro.sample("locs", dist.Normal(numpyro.param("m", jnp.zeros(3)), 1.0).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=numpyro.param("zl", jnp.zeros((4, 3)))))

    obj = estimators.elbo(model, handlers.mvd(guide, sites=["locs"], layout=True))
    params = obj.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"\['locs'\] carry extra leading dims.*Vindex"):
        obj.value_and_grad(params, jax.random.PRNGKey(1), x)
    # by continuation (the default) the site keeps its shape: plain indexing works
    obj = estimators.elbo(model, handlers.mvd(guide, sites=["locs"]))
    _, grads = obj.value_and_grad(params, jax.random.PRNGKey(1), x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
