"""Bayesian linear regression on the diabetes data, trained on random minibatches.

Shows: a subsampled data plate, ``numpyro.plate("data", N,
subsample_size=B)``, in the style of NumPyro's ``hmcecs``/``covtype``
examples: each step sees ``B`` rows picked by the plate and the plate scales
their log-likelihood by ``N/B``, so the ELBO estimate stays unbiased for the
full data. Heavy-tailed (Student-t) noise; guide: ``AutoNormal``.

Data: scikit-learn's diabetes data (442 patients, 10 standardized features).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoNormal


def model(X, y=None, batch_size=64):
    N, D = X.shape
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    with numpyro.plate("data", N, subsample_size=batch_size) as idx:
        mean = X[idx] @ w + b
        numpyro.sample("y", dist.StudentT(nu, mean, sigma), obs=None if y is None else y[idx])


guide = AutoNormal(model)


def data():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return (jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)), {}


__all__ = ["model", "guide", "data"]
