"""Binomial GLM with department-level intercepts and slopes correlated through ``LKJCholesky``.

Shows: a varying-effects logistic regression in the style of NumPyro's
``ucbadmit`` example — each department's (intercept, slope) pair is
multivariate normal with scales and an ``LKJCholesky`` correlation factor, the
counts are ``Binomial`` with a logit link — fitted with a full-rank
``AutoMultivariateNormal`` guide (the LKJ factor goes through its
``CorrCholesky`` bijection).

Data: synthetic admissions counts the shape of UC Berkeley's 1973 table
(6 departments × 2 groups, applications and admissions).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoMultivariateNormal


def model(dept, male, applications, admit=None, num_depts=6):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0).expand([2]).to_event(1))
    L_Rho = numpyro.sample("L_Rho", dist.LKJCholesky(2, concentration=2.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    scale_tril = sigma[..., jnp.newaxis] * L_Rho
    with numpyro.plate("departments", num_depts):
        a_b = numpyro.sample("a_b", dist.MultivariateNormal(mu, scale_tril=scale_tril))
    logits = a_b[dept, 0] + a_b[dept, 1] * male
    with numpyro.plate("data", dept.shape[0]):
        numpyro.sample("admit", dist.Binomial(applications, logits=logits), obs=admit)


guide = AutoMultivariateNormal(model)


def data():
    rng = np.random.default_rng(0)
    dept = np.repeat(np.arange(6), 2)
    male = np.tile([1.0, 0.0], 6)
    applications = rng.integers(100, 800, size=12)
    a = rng.normal(0.0, 1.2, size=6)
    b = -0.4 * a + rng.normal(0.0, 0.2, size=6)
    p = 1 / (1 + np.exp(-(a[dept] + b[dept] * male)))
    admit = rng.binomial(applications, p)
    return ((jnp.asarray(dept), jnp.asarray(male, jnp.float32),
             jnp.asarray(applications, jnp.float32)),
            {"admit": jnp.asarray(admit, jnp.float32)})


__all__ = ["model", "guide", "data"]
