"""Second-order autoregressive time series written with ``scan``.

Shows: NumPyro's ``ar2`` example — the recursion
``y_t ~ N(c + α₁ y_{t−1} + α₂ y_{t−2}, σ)`` as a
``numpyro.contrib.control_flow.scan`` over time, with the observations
supplied by ``handlers.condition`` (the scanned site is observed at every
step). Guide: ``AutoNormal`` on the four parameters.

Data: a synthetic AR(2) series of 300 steps.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.infer.autoguide import AutoNormal


def model(y):
    alpha_1 = numpyro.sample("alpha_1", dist.Normal(0, 1))
    alpha_2 = numpyro.sample("alpha_2", dist.Normal(0, 1))
    const = numpyro.sample("const", dist.Normal(0, 1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1))

    def transition(carry, _):
        y_prev, y_prev_prev = carry
        m_t = const + alpha_1 * y_prev + alpha_2 * y_prev_prev
        y_t = numpyro.sample("y", dist.Normal(m_t, sigma))
        return (y_t, y_prev), None

    timesteps = jnp.arange(y.shape[0] - 2)
    init = (y[1], y[0])
    with numpyro.handlers.condition(data={"y": y[2:]}):
        scan(transition, init, timesteps)


guide = AutoNormal(model)


def data(num_steps=300):
    rng = np.random.default_rng(0)
    y = np.zeros(num_steps)
    for t in range(2, num_steps):
        y[t] = 0.5 + 0.6 * y[t - 1] - 0.3 * y[t - 2] + 0.5 * rng.standard_normal()
    return (jnp.asarray(y, jnp.float32),), {}


__all__ = ["model", "guide", "data"]
