"""Gaussian-process regression with learned kernel hyperparameters.

Shows: NumPyro's ``gp`` example — an RBF kernel built from three latent
hyperparameters (variance, length scale, noise; LogNormal priors) and the
observations as one ``MultivariateNormal`` with that covariance (a Cholesky
factorization inside the model). Guide: ``AutoNormal`` on the log
hyperparameters.

Data: the example's synthetic 1-D curve (30 noisy points), standardized.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoNormal


def kernel(X, Z, var, length, noise, jitter=1.0e-6, include_noise=True):
    deltaXsq = jnp.power((X[:, None] - Z) / length, 2.0)
    k = var * jnp.exp(-0.5 * deltaXsq)
    if include_noise:
        k += (noise + jitter) * jnp.eye(X.shape[0])
    return k


def model(X, Y):
    var = numpyro.sample("kernel_var", dist.LogNormal(0.0, 10.0))
    noise = numpyro.sample("kernel_noise", dist.LogNormal(0.0, 10.0))
    length = numpyro.sample("kernel_length", dist.LogNormal(0.0, 10.0))
    k = kernel(X, X, var, length, noise)
    numpyro.sample("Y", dist.MultivariateNormal(loc=jnp.zeros(X.shape[0]), covariance_matrix=k),
                   obs=Y)


guide = AutoNormal(model)


def data(N=30, sigma_obs=0.15):
    rng = np.random.default_rng(0)
    X = np.linspace(-1, 1, N)
    Y = X + 0.2 * np.power(X, 3.0) + 0.5 * np.power(0.5 + X, 2.0) * np.sin(4.0 * X)
    Y = Y + sigma_obs * rng.standard_normal(N)
    Y = (Y - Y.mean()) / Y.std()
    return (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)), {}


__all__ = ["model", "guide", "data", "kernel"]
