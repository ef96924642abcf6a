"""The ELBO estimator against exact answers (DESIGN.md §7 and exact enumeration).

Pattern (see ``tests/conftest.py``): N independent keys, one estimate per key
(``vmap`` under ``jit``), z-test of the mean against the exact value with σ̂
from the same samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro.infer import Trace_ELBO

from stackvi import estimators
from stackvi.handlers import reinforce
from tests.conftest import (
    NormalNormal,
    RebarToy,
    assert_lower_variance,
    assert_unbiased,
    keys,
    per_key,
)

N = 4000


# --------------------------------------------------------------------------- Normal–Normal


NN = NormalNormal()
NN_OBJ = {"reparam": estimators.elbo(NN.model, NN.guide),
          "reinforce": estimators.elbo(NN.model, reinforce(NN.guide))}


@pytest.mark.parametrize("strategy", ["reparam", "reinforce"])
@settings(max_examples=3, deadline=None, derandomize=True)
@given(m=st.floats(-1.5, 2.5), v=st.floats(0.2, 1.5))
def test_normal_normal_value_and_gradient_unbiased(strategy, m, v):
    nn = NN
    obj = NN_OBJ[strategy]
    values, grads = per_key(obj, nn.params(m, v), N, nn.data)
    assert_unbiased(values, nn.elbo(m, v), "ELBO")
    assert_unbiased(grads["m"], nn.grad_m(m, v), f"dELBO/dm ({strategy})")
    assert_unbiased(grads["v"], nn.grad_log_v(m, v), f"dELBO/dlog v ({strategy})")


def test_normal_normal_particles_average(normal_normal):
    nn, m, v = normal_normal, 0.7, 0.6
    one = estimators.elbo(nn.model, nn.guide, num_particles=1)
    four = estimators.elbo(nn.model, nn.guide, num_particles=4)
    v1, _ = per_key(one, nn.params(m, v), N, nn.data)
    v4, _ = per_key(four, nn.params(m, v), N, nn.data)
    assert_unbiased(v4, nn.elbo(m, v), "ELBO, 4 particles")
    # averaging 4 independent particles divides the variance by 4: test Var(v1)/Var(v4) > 1
    # with the sampling margin, and that it is not far above 4 either.
    ratio = assert_lower_variance(v4, v1, "4 particles vs 1")
    assert ratio < 8.0


def test_reinforce_has_higher_variance_than_reparam():
    p = NN.params(0.5, 0.7)
    _, g_rep = per_key(NN_OBJ["reparam"], p, N, NN.data)
    _, g_rf = per_key(NN_OBJ["reinforce"], p, N, NN.data)
    assert_lower_variance(g_rep["m"], g_rf["m"], "reparam vs reinforce")


# --------------------------------------------------------------------------- REBAR toy


REBAR_OBJ = RebarToy().objective()


@settings(max_examples=3, deadline=None, derandomize=True)
@given(eta=st.floats(-2.0, 2.0))
def test_rebar_toy_reinforce_unbiased(eta):
    toy = RebarToy()
    values, grads = per_key(REBAR_OBJ, {"eta": jnp.float32(eta)}, 20_000)
    assert_unbiased(values, toy.value(eta), "REBAR objective")
    assert_unbiased(grads["eta"], toy.grad(eta), "REBAR gradient")


# ------------------------------------------------------------------------ where NumPyro is biased


X_OBS = 1.3


def bern_model(x):
    b = numpyro.sample("b", dist.Bernoulli(0.3))
    numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)


def bern_guide(x):
    eta = numpyro.param("eta", 0.0)
    numpyro.sample("b", dist.Bernoulli(logits=eta))


def bern_exact_elbo(eta, x=X_OBS):
    q1 = jax.nn.sigmoid(eta)
    total = 0.0
    for b, qb in ((0.0, 1 - q1), (1.0, q1)):
        log_p = dist.Bernoulli(0.3).log_prob(b) + dist.Normal(2.0 * b, 1.0).log_prob(x)
        total = total + qb * (log_p - jnp.log(qb))
    return total


def test_bernoulli_latent_default_unbiased_where_numpyro_trace_elbo_is_not():
    eta = 0.4
    exact = float(jax.grad(bern_exact_elbo)(eta))
    obj = estimators.elbo(bern_model, bern_guide)  # no annotation: the default strategy
    values, grads = per_key(obj, {"eta": jnp.float32(eta)}, 20_000, X_OBS)
    assert_unbiased(values, bern_exact_elbo(eta), "ELBO")
    assert_unbiased(grads["eta"], exact, "stackvi default gradient")

    def numpyro_grad(k):
        return jax.grad(lambda e: -Trace_ELBO().loss(k, {"eta": e}, bern_model, bern_guide,
                                                     X_OBS))(jnp.float32(eta))

    g_np = np.asarray(jax.jit(jax.vmap(numpyro_grad))(keys(20_000, 1)), np.float64)
    se = g_np.std(ddof=1) / np.sqrt(g_np.size)
    # NumPyro drops the score term: its mean is E[∇(−log q)] = 0, not the exact gradient.
    assert abs(g_np.mean() - exact) > 4 * se, (g_np.mean(), exact, se)
    assert abs(g_np.mean()) <= 4 * se


# --------------------------------------------------------------------------- Rao-Blackwellization

XS = jnp.array([1.3, -0.4, 2.2, 0.1, 1.8, 0.9])


def local_model(x, plated=True):
    if plated:
        with numpyro.plate("data", x.shape[0]):
            b = numpyro.sample("b", dist.Bernoulli(0.3))
            numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)
    else:  # the same joint density, with no independence declared
        b = numpyro.sample("b", dist.Bernoulli(0.3).expand([x.shape[0]]).to_event(1))
        numpyro.sample("x", dist.Normal(2.0 * b, 1.0).to_event(1), obs=x)


def local_guide(x, plated=True):
    eta = numpyro.param("eta", jnp.zeros(x.shape[0]))
    if plated:
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("b", dist.Bernoulli(logits=eta))
    else:
        numpyro.sample("b", dist.Bernoulli(logits=eta).to_event(1))


def local_exact_elbo(eta, x):
    return jnp.sum(jax.vmap(bern_exact_elbo)(eta, x))


def test_rao_blackwellization_lowers_variance_and_stays_unbiased():
    eta = jnp.linspace(-1.0, 1.0, XS.shape[0])
    exact = jax.grad(local_exact_elbo)(eta, XS)
    grads = {}
    for plated in (True, False):
        obj = estimators.elbo(lambda x, p=plated: local_model(x, p),
                              lambda x, p=plated: local_guide(x, p))
        values, g = per_key(obj, {"eta": eta}, N, XS)
        assert_unbiased(values, local_exact_elbo(eta, XS), f"ELBO (plated={plated})")
        assert_unbiased(g["eta"], exact, f"gradient (plated={plated})")
        grads[plated] = np.asarray(g["eta"])
    for i in range(XS.shape[0]):  # each element sees only its own cost with the plate
        assert_lower_variance(grads[True][:, i], grads[False][:, i], f"eta[{i}] RB")


# --------------------------------------------------------------------------- subsampling

NN_FULL = NormalNormal(x=(0.5, 1.7, -0.2, 1.1, 0.3, 2.4, 0.8, -0.6))
XFULL = NN_FULL.data


def sub_model(x, m=3):
    nn = NN_FULL
    z = numpyro.sample("z", dist.Normal(nn.mu0, nn.s0))
    with numpyro.plate("data", x.shape[0], subsample_size=m) as idx:
        numpyro.sample("x", dist.Normal(z, nn.s), obs=x[idx])


def test_subsampled_plate_is_unbiased_for_the_full_data_elbo():
    nn = NN_FULL
    m, v = 0.9, 0.4
    obj = estimators.elbo(sub_model, nn.guide)
    values, grads = per_key(obj, nn.params(m, v), N, XFULL)
    assert_unbiased(values, nn.elbo(m, v), "subsampled ELBO")
    assert_unbiased(grads["m"], nn.grad_m(m, v), "subsampled dELBO/dm")
    assert_unbiased(grads["v"], nn.grad_log_v(m, v), "subsampled dELBO/dlog v")


def sub_local_model(x):
    with numpyro.plate("data", x.shape[0], subsample_size=2) as idx:
        b = numpyro.sample("b", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x[idx])


def sub_local_guide(x):
    eta = numpyro.param("eta", jnp.zeros(x.shape[0]))
    with numpyro.plate("data", x.shape[0], subsample_size=2) as idx:
        numpyro.sample("b", dist.Bernoulli(logits=eta[idx]))


def test_subsampled_local_discrete_latents_unbiased():
    eta = jnp.linspace(-0.5, 1.0, XS.shape[0])
    obj = estimators.elbo(sub_local_model, sub_local_guide)
    values, grads = per_key(obj, {"eta": eta}, 20_000, XS)
    assert_unbiased(values, local_exact_elbo(eta, XS), "subsampled local ELBO")
    assert_unbiased(grads["eta"], jax.grad(local_exact_elbo)(eta, XS), "subsampled gradient")


# --------------------------------------------------------------------------- jit, leaks


@pytest.mark.slow
def test_jit_and_eager_agree_and_do_not_leak(normal_normal):
    nn = normal_normal
    models = {
        "normal": (estimators.elbo(nn.model, reinforce(nn.guide, baseline="ema"),
                                   num_particles=3), nn.params(0.2, 0.9), (nn.data,)),
        "local": (estimators.elbo(local_model, local_guide, num_particles=2),
                  {"eta": jnp.linspace(-1, 1, 6)}, (XS,)),
    }
    for name, (obj, params, args) in models.items():
        key = jax.random.PRNGKey(3)
        with jax.checking_leaks():
            f = jax.jit(obj.value_and_grad)
            v_j, g_j = f(params, key, *args)
            f(params, jax.random.PRNGKey(4), *args)  # a cached second call
            state = obj.init_state(params, key, *args)
            step = jax.jit(obj.value_and_grad_with_state)
            _, _, state = step(params, state, key, *args)
            _, _, state = step(params, state, key, *args)
        if name != "normal":
            continue  # eager runs op by op (slow): one model is enough
        v_e, g_e = obj.value_and_grad(params, key, *args)
        np.testing.assert_allclose(v_j, v_e, rtol=1e-5, atol=1e-5, err_msg=name)
        for k in g_e:
            np.testing.assert_allclose(g_j[k], g_e[k], rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(obj.estimate(params, key, *args), v_e, rtol=1e-5)


# --------------------------------------------------------------------------- sequential plates

XB = jnp.array([1.2, 0.4, 2.1])


def seq_model(x):
    with numpyro.plate("a", 3):
        b = numpyro.sample("b", dist.Bernoulli(0.4))
    with numpyro.plate("obs", 3):  # same size, same dim: only the name tells them apart
        numpyro.sample("x", dist.Normal(jnp.sum(b), 1.0), obs=x)


def seq_guide(x):
    eta = numpyro.param("eta", jnp.zeros(3))
    with numpyro.plate("a", 3):
        numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(eta)))


def seq_exact_elbo(eta, x):
    q = jax.nn.sigmoid(eta)
    total = 0.0
    for bits in np.ndindex(2, 2, 2):
        b = jnp.asarray(bits, jnp.float32)
        log_q = jnp.sum(dist.Bernoulli(q).log_prob(b))
        log_p = jnp.sum(dist.Bernoulli(0.4).log_prob(b)) + jnp.sum(
            dist.Normal(jnp.sum(b), 1.0).log_prob(x))
        total = total + jnp.exp(log_q) * (log_p - log_q)
    return total


def test_sequential_plates_at_the_same_dim_are_not_confused():
    # Every x_j depends on every b_i. Matching plates by dim would give b_i only x_i's cost
    # (a biased gradient); matched by name, plate "obs" is summed into every b_i's signal.
    eta = jnp.array([-0.7, 0.2, 0.9])
    obj = estimators.elbo(seq_model, seq_guide)
    values, grads = per_key(obj, {"eta": eta}, 20_000, XB)
    assert_unbiased(values, seq_exact_elbo(eta, XB), "ELBO")
    assert_unbiased(grads["eta"], jax.grad(seq_exact_elbo)(eta, XB), "gradient")


# --------------------------------------------------------------------------- dependence by order

XD = jnp.array([1.3, -0.4, 2.2])


def mix_model(x):
    with numpyro.plate("d", 3):
        b = numpyro.sample("b", dist.Bernoulli(0.3))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("d", 3):
        numpyro.sample("x", dist.Normal(z + b, 1.0), obs=x)


def mix_guide(x):
    eta = numpyro.param("eta", jnp.zeros(3))
    with numpyro.plate("d", 3):
        b = numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(eta)))
    numpyro.sample("z", dist.Normal(2.0 * jnp.mean(b), 1.0))  # mixes the plate's elements


def mix_exact_elbo(eta, x):
    """Enumerate b; z | b is Gaussian, so its expectations are closed form."""
    q, half_log_2pi, total = jax.nn.sigmoid(eta), 0.5 * jnp.log(2 * jnp.pi), 0.0
    for bits in np.ndindex(2, 2, 2):
        b = jnp.asarray(bits, jnp.float32)
        mu = 2.0 * jnp.mean(b)
        log_q = jnp.sum(dist.Bernoulli(q).log_prob(b))
        inner = (-half_log_2pi - (mu**2 + 1) / 2
                 + jnp.sum(-half_log_2pi - ((x - b - mu) ** 2 + 1) / 2)
                 + half_log_2pi + 0.5)  # − E log q(z | b)
        total = total + jnp.exp(log_q) * (jnp.sum(dist.Bernoulli(0.3).log_prob(b)) - log_q
                                          + inner)
    return total


def test_later_guide_site_outside_the_plate_keeps_the_gradient_unbiased():
    # z depends on every b_i, and every x_j on z: b_i's signal needs all x_j, not only x_i.
    eta = jnp.array([-0.5, 0.3, 0.8])
    values, grads = per_key(estimators.elbo(mix_model, mix_guide), {"eta": eta}, 20_000, XD)
    assert_unbiased(values, mix_exact_elbo(eta, XD), "ELBO")
    assert_unbiased(grads["eta"], jax.grad(mix_exact_elbo)(eta, XD), "gradient")


def parent_model():
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    numpyro.sample("w", dist.Normal(a, 1.0))
    numpyro.sample("z", dist.Bernoulli(0.5))


def parent_guide():
    numpyro.sample("w", dist.Normal(2.0, 1.0))  # before z in the guide...
    z = numpyro.sample("z", dist.Bernoulli(jax.nn.sigmoid(numpyro.param("eta", 0.0))))
    numpyro.sample("a", dist.Normal(3.0 * z, 1.0))  # ...but its model parent a comes after z


def parent_exact_elbo(eta):
    q, half_log_2pi, total = jax.nn.sigmoid(eta), 0.5 * jnp.log(2 * jnp.pi), 0.0
    for z, qz in ((0.0, 1 - q), (1.0, q)):
        e_log_p_a = -half_log_2pi - (9 * z**2 + 1) / 2
        e_log_p_w = -half_log_2pi - ((2.0 - 3 * z) ** 2 + 2) / 2
        e_log_q_aw = 2 * (-half_log_2pi - 0.5)
        total = total + qz * (e_log_p_a + e_log_p_w - e_log_q_aw + jnp.log(0.5) - jnp.log(qz))
    return total


def test_model_term_whose_parent_depends_on_the_node_stays_in_its_signal():
    eta = jnp.float32(0.3)
    values, grads = per_key(estimators.elbo(parent_model, parent_guide), {"eta": eta}, 20_000)
    assert_unbiased(values, parent_exact_elbo(eta), "ELBO")
    assert_unbiased(grads["eta"], jax.grad(parent_exact_elbo)(eta), "gradient")
