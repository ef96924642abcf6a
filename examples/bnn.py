"""Bayesian neural network regression with a mean-field ``AutoDiagonalNormal`` guide.

Shows: NumPyro's ``bnn`` example — two tanh hidden layers whose weights are
latent sites with Normal priors (batch-shaped, no plate), a Gamma prior on the
noise precision; ``AutoDiagonalNormal`` flattens all latents into one vector
(a single pathwise site that the model sites are read from).

Data: the example's synthetic 1-D regression problem (100 points, inputs
expanded to powers 0..2, a wiggly target with noise), standardized.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoDiagonalNormal


def nonlin(x):
    return jnp.tanh(x)


def model(X, Y, D_H=5, D_Y=1):
    N, D_X = X.shape
    w1 = numpyro.sample("w1", dist.Normal(jnp.zeros((D_X, D_H)), jnp.ones((D_X, D_H))))
    z1 = nonlin(jnp.matmul(X, w1))
    w2 = numpyro.sample("w2", dist.Normal(jnp.zeros((D_H, D_H)), jnp.ones((D_H, D_H))))
    z2 = nonlin(jnp.matmul(z1, w2))
    w3 = numpyro.sample("w3", dist.Normal(jnp.zeros((D_H, D_Y)), jnp.ones((D_H, D_Y))))
    z3 = jnp.matmul(z2, w3)
    prec_obs = numpyro.sample("prec_obs", dist.Gamma(3.0, 1.0))
    sigma_obs = 1.0 / jnp.sqrt(prec_obs)
    with numpyro.plate("data", N):
        numpyro.sample("Y", dist.Normal(z3, sigma_obs).to_event(1), obs=Y)


guide = AutoDiagonalNormal(model)


def data(N=100, D_X=3, sigma_obs=0.05):
    rng = np.random.default_rng(0)
    X = np.linspace(-1, 1, N)
    X = np.power(X[:, None], np.arange(D_X))
    W = 0.5 * rng.standard_normal(D_X)
    Y = X @ W + 0.5 * np.power(0.5 + X[:, 1], 2.0) * np.sin(4.0 * X[:, 1])
    Y = Y + sigma_obs * rng.standard_normal(N)
    Y = (Y - Y.mean()) / Y.std()
    return (jnp.asarray(X, jnp.float32), jnp.asarray(Y[:, None], jnp.float32)), {}


__all__ = ["model", "guide", "data"]
