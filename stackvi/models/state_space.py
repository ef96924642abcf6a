"""State-space models written with NumPyro's ``scan``, and their exact likelihoods.

* The linear-Gaussian state space of DESIGN.md §7 (the VSMC setup):
  ``x_1 ~ N(0, I)``, ``x_t = A x_{t−1} + N(0, I)``, ``y_t = C x_t + N(0, r I)``,
  ``A_ij = α^{|i−j|+1}``; :func:`kalman` gives the exact ``log p(y)`` and the
  filtered means, differentiable in the parameters.
* A discrete HMM with Gaussian emissions; :func:`hmm_forward` gives the exact
  ``log p(y)`` by the log-space forward algorithm.

Both models start their ``scan`` from a fixed carry, so the whole latent path
is inside the scan and ``smc_marginalize`` can filter it: the LGSSM from
``x_0 = 0`` (then ``A x_0 + N(0, I) = N(0, I)`` is exactly ``x_1``'s law), the
HMM from an extra "start" state whose transition row is the initial
distribution.

>>> import jax
>>> A, C = lgssm_matrices()
>>> x, y = lgssm_simulate(jax.random.PRNGKey(0), A, C, T=10)
>>> x.shape, y.shape
((10, 5), (10, 3))
>>> log_z, means = kalman(y, A, C)
>>> means.shape
(10, 5)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro.contrib.control_flow import scan

__all__ = [
    "lgssm_matrices",
    "lgssm_model",
    "lgssm_simulate",
    "kalman",
    "hmm_model",
    "hmm_simulate",
    "hmm_forward",
]

OBS_VAR = 0.1


def lgssm_matrices(dx: int = 5, dy: int = 3, alpha: float = 0.42) -> tuple[jax.Array, jax.Array]:
    """``A_ij = α^{|i−j|+1}`` (``dx×dx``) and ``C = [I | 0]`` (``dy×dx``)."""
    i = jnp.arange(dx)
    A = alpha ** (jnp.abs(i[:, None] - i[None, :]) + 1.0)
    C = jnp.eye(dy, dx)
    return A, C


def lgssm_model(y: jax.Array, A: jax.Array, C: jax.Array, obs_var: float = OBS_VAR):
    """The linear-Gaussian state space; ``y`` is ``[T, dy]``. Returns the path ``[T, dx]``."""
    obs_sd = jnp.sqrt(obs_var)

    def transition(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(A @ x_prev, 1.0).to_event(1))
        numpyro.sample("y", dist.Normal(C @ x, obs_sd).to_event(1), obs=y_t)
        return x, x

    _, xs = scan(transition, jnp.zeros(A.shape[0]), y)
    return xs


def lgssm_simulate(key: jax.Array, A: jax.Array, C: jax.Array, T: int = 10,
                   obs_var: float = OBS_VAR) -> tuple[jax.Array, jax.Array]:
    """A draw ``(x [T, dx], y [T, dy])`` from the model."""
    kx, ky = random.split(key)
    eps = random.normal(kx, (T, A.shape[0]))

    def step(x, e):
        x = A @ x + e
        return x, x

    _, x = jax.lax.scan(step, jnp.zeros(A.shape[0]), eps)
    y = x @ C.T + jnp.sqrt(obs_var) * random.normal(ky, (T, C.shape[0]))
    return x, y


def kalman(y: jax.Array, A: jax.Array, C: jax.Array,
           obs_var: float = OBS_VAR) -> tuple[jax.Array, jax.Array]:
    """``(log p(y), filtered means [T, dx])`` of the LGSSM by the Kalman filter."""
    dx, dy = A.shape[0], C.shape[0]
    R = obs_var * jnp.eye(dy)

    def step(state, y_t):
        m, P, ll = state
        m, P = A @ m, A @ P @ A.T + jnp.eye(dx)  # predict (from x_0 = 0, P_0 = 0)
        S = C @ P @ C.T + R
        ll = ll + dist.MultivariateNormal(C @ m, S).log_prob(y_t)
        gain = jnp.linalg.solve(S, C @ P).T
        m = m + gain @ (y_t - C @ m)
        P = P - gain @ C @ P
        return (m, P, ll), m

    (_, _, ll), means = jax.lax.scan(step, (jnp.zeros(dx), jnp.zeros((dx, dx)), 0.0), y)
    return ll, means


def hmm_model(y: jax.Array, init: jax.Array, trans: jax.Array, means: jax.Array,
              sd: float = 1.0):
    """A discrete HMM: ``z_1 ~ Cat(init)``, ``z_t ~ Cat(trans[z_{t−1}])``, ``y_t ~ N(μ[z_t], sd)``.

    ``init`` and ``trans`` are probabilities (``[S]``, ``[S, S]``); the scan starts
    from the extra state ``S`` whose row is ``init``.
    """
    rows = jnp.concatenate([trans, init[None]], axis=0)

    def transition(z_prev, y_t):
        z = numpyro.sample("z", dist.Categorical(probs=rows[z_prev]))
        numpyro.sample("y", dist.Normal(means[z], sd), obs=y_t)
        return z, z

    _, zs = scan(transition, jnp.asarray(trans.shape[0]), y)
    return zs


def hmm_simulate(key: jax.Array, init, trans, means, T: int, sd: float = 1.0):
    """A draw ``(z [T], y [T])`` from the HMM."""
    kz, ky = random.split(key)
    rows = jnp.concatenate([trans, init[None]], axis=0)

    def step(z, k):
        z = random.categorical(k, jnp.log(rows[z]))
        return z, z

    _, z = jax.lax.scan(step, jnp.asarray(trans.shape[0]), random.split(kz, T))
    return z, means[z] + sd * random.normal(ky, (T,))


def hmm_forward(y: jax.Array, init, trans, means, sd: float = 1.0) -> jax.Array:
    """Exact ``log p(y)`` of the HMM by the log-space forward algorithm."""
    log_trans = jnp.log(trans)
    emit = dist.Normal(means[None, :], sd).log_prob(y[:, None])  # [T, S]
    alpha = jnp.log(init) + emit[0]

    def step(alpha, e):
        return jax.nn.logsumexp(alpha[:, None] + log_trans, axis=0) + e, None

    alpha, _ = jax.lax.scan(step, alpha, emit[1:])
    return jax.nn.logsumexp(alpha)
