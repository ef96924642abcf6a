"""NumPyro interop: unchanged NumPyro models and guides give the same ELBO as NumPyro's.

For reparameterizable models, stackvi's ``elbo(...).estimate`` and
``-numpyro.infer.Trace_ELBO().loss(...)`` are two unbiased estimators of the
same number. With independent keys for each, the difference of their means
over N keys is ~N(0, se_a² + se_b²): we require |Δ| ≤ 4·√(se_a² + se_b²).
The same check on the gradients (NumPyro's is unbiased here: every site is
reparameterized) covers ``value_and_grad``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from stackvi import estimators
from tests.conftest import keys

N = 1000


def assert_same_mean(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    se = math.sqrt(a.var(ddof=1) / a.shape[0] + b.var(ddof=1) / b.shape[0])
    diff = np.abs(a.mean(0) - b.mean(0))
    assert np.all(diff <= 4 * se + 1e-6), f"{what}: stackvi {a.mean(0)} vs NumPyro {b.mean(0)}"


def compare(model, guide, args, seed=0, grads=True, n=N):
    obj = estimators.elbo(model, guide)
    params = obj.init(jax.random.PRNGKey(seed), *args)
    constrained = obj.constrain(params, *args)

    def ours(k):
        if not grads:
            return obj.estimate(params, k, *args), None
        return obj.value_and_grad(params, k, *args)

    def theirs(k):
        def neg_loss(p):
            return -Trace_ELBO().loss(k, obj.constrain(p, *args), model, guide, *args)

        return jax.value_and_grad(neg_loss)(params) if grads else (neg_loss(params), None)

    v_a, g_a = jax.jit(jax.vmap(ours))(keys(n, 1))
    v_b, g_b = jax.jit(jax.vmap(theirs))(keys(n, 2))
    assert_same_mean(v_a, v_b, "ELBO")
    if grads:
        for name in params:
            for la, lb in zip(jax.tree_util.tree_leaves(g_a[name]),
                              jax.tree_util.tree_leaves(g_b[name]), strict=True):
                assert_same_mean(la, lb, f"gradient of {name}")
    return params, constrained


# --------------------------------------------------------------------------- models

X = jnp.array([0.3, -1.2, 2.0, 0.7, 1.1, -0.4, 0.9])


def model(x):
    prior_scale = numpyro.param("prior_scale", 2.0, constraint=constraints.positive)
    mu = numpyro.sample("mu", dist.Normal(0.0, prior_scale))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.5))
    with numpyro.plate("groups", 2, dim=-2):
        g = numpyro.sample("g", dist.Normal(mu, 1.0))
        with numpyro.plate("data", x.shape[0], dim=-1):
            numpyro.sample("x", dist.Normal(g, sigma), obs=jnp.broadcast_to(x, (2, x.shape[0])))


def guide(x):
    m = numpyro.param("m", 0.5)
    s = numpyro.param("s", 0.7, constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s))
    numpyro.sample("sigma", dist.LogNormal(numpyro.param("ls", 0.1), 0.3))
    gl = numpyro.param("gl", jnp.zeros((2, 1)))
    with numpyro.plate("groups", 2, dim=-2):
        numpyro.sample("g", dist.Normal(gl, 0.5))


@pytest.mark.slow
def test_plates_observed_and_params_match_numpyro():
    params, constrained = compare(model, guide, (X,))
    assert sorted(params) == ["gl", "ls", "m", "prior_scale", "s"]
    assert float(constrained["s"]) == pytest.approx(0.7, rel=1e-5)
    assert float(params["s"]) == pytest.approx(math.log(0.7), rel=1e-5)  # unconstrained


@pytest.mark.slow
def test_autonormal_guide_matches_numpyro():
    auto = AutoNormal(model, init_scale=0.3)
    params, constrained = compare(model, auto, (X,), grads=False)
    assert {"mu_auto_loc", "mu_auto_scale", "g_auto_loc", "sigma_auto_scale"} <= set(params)
    np.testing.assert_allclose(constrained["g_auto_scale"], 0.3, rtol=1e-5)


# ------------------------------------------------------------------ VAE (NumPyro example style)


def _digits(n=16):
    from sklearn.datasets import load_digits

    images = load_digits().images[:n].reshape(n, -1) / 16.0
    return jnp.asarray(images > 0.5, jnp.float32)


def encoder(hidden_dim, z_dim):
    from jax.example_libraries import stax

    return stax.serial(
        stax.Dense(hidden_dim, W_init=stax.randn()), stax.Softplus,
        stax.FanOut(2),
        stax.parallel(stax.Dense(z_dim, W_init=stax.randn()),
                      stax.serial(stax.Dense(z_dim, W_init=stax.randn()), stax.Exp)),
    )


def decoder(hidden_dim, out_dim):
    from jax.example_libraries import stax

    return stax.serial(
        stax.Dense(hidden_dim, W_init=stax.randn()), stax.Softplus,
        stax.Dense(out_dim, W_init=stax.randn()), stax.Sigmoid,
    )


def vae_model(batch, hidden_dim=32, z_dim=4):
    batch_dim, out_dim = jnp.shape(batch)
    decode = numpyro.module("decoder", decoder(hidden_dim, out_dim), (batch_dim, z_dim))
    with numpyro.plate("batch", batch_dim):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([z_dim]).to_event(1))
        img_loc = decode(z)
        return numpyro.sample("obs", dist.Bernoulli(img_loc).to_event(1), obs=batch)


def vae_guide(batch, hidden_dim=32, z_dim=4):
    batch_dim, out_dim = jnp.shape(batch)
    encode = numpyro.module("encoder", encoder(hidden_dim, z_dim), (batch_dim, out_dim))
    z_loc, z_std = encode(batch)
    with numpyro.plate("batch", batch_dim):
        return numpyro.sample("z", dist.Normal(z_loc, z_std).to_event(1))


@pytest.mark.slow
def test_vae_with_stax_modules_matches_numpyro():
    params, _ = compare(vae_model, vae_guide, (_digits(),), grads=False, n=300)
    assert sorted(params) == ["decoder$params", "encoder$params"]
    # Objective.init gives the stax parameter pytrees themselves
    leaves = jax.tree_util.tree_leaves(params["encoder$params"])
    assert leaves and all(jnp.all(jnp.isfinite(x)) for x in leaves)
