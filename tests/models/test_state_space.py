"""The exact references of ``stackvi.models.state_space`` against brute force.

* Kalman filter = the Gaussian density of all observations at once (their
  joint covariance built from the path's covariance).
* Forward algorithm = the sum over every latent path (small T).
* The NumPyro models' joint densities match the simulators' generative story.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, substitute, trace

from stackvi.models.state_space import (
    OBS_VAR,
    hmm_forward,
    hmm_model,
    hmm_simulate,
    kalman,
    lgssm_matrices,
    lgssm_model,
    lgssm_simulate,
)


@pytest.mark.slow
def test_kalman_equals_the_joint_gaussian_density():
    A, C = lgssm_matrices()
    _, y = lgssm_simulate(jax.random.PRNGKey(0), A, C, T=6)
    A64, C64 = np.asarray(A, np.float64), np.asarray(C, np.float64)
    T, dx, dy = 6, 5, 3
    # x_t = Σ_{s ≤ t} A^{t−s} ε_s  ⇒  Cov(x_t, x_u) = Σ_{s ≤ min(t, u)} A^{t−s} (A^{u−s})ᵀ.
    power = [np.linalg.matrix_power(A64, k) for k in range(T)]
    cov_x = np.zeros((T * dx, T * dx))
    for t in range(T):
        for u in range(T):
            block = sum(power[t - s] @ power[u - s].T for s in range(min(t, u) + 1))
            cov_x[t * dx:(t + 1) * dx, u * dx:(u + 1) * dx] = block
    big_c = np.kron(np.eye(T), C64)
    cov_y = big_c @ cov_x @ big_c.T + OBS_VAR * np.eye(T * dy)
    exact = dist.MultivariateNormal(jnp.zeros(T * dy), jnp.asarray(cov_y)).log_prob(
        y.reshape(-1))
    log_z, _ = kalman(y, A, C)
    np.testing.assert_allclose(log_z, exact, rtol=1e-4)


@pytest.mark.slow
def test_forward_equals_the_sum_over_paths():
    init = jnp.array([0.5, 0.3, 0.2])
    trans = jnp.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6]])
    means = jnp.array([-1.0, 0.5, 2.0])
    _, y = hmm_simulate(jax.random.PRNGKey(0), init, trans, means, T=5)
    paths = np.array(list(itertools.product(range(3), repeat=5)))
    log_p = (np.log(init[paths[:, 0]])
             + np.sum(np.log(np.asarray(trans)[paths[:, :-1], paths[:, 1:]]), axis=1)
             + np.sum(np.asarray(dist.Normal(means[paths], 1.0).log_prob(y)), axis=1))
    np.testing.assert_allclose(hmm_forward(y, init, trans, means),
                               jax.nn.logsumexp(log_p), rtol=1e-5)


@pytest.mark.slow
def test_models_score_paths_like_their_simulators():
    A, C = lgssm_matrices()
    x, y = lgssm_simulate(jax.random.PRNGKey(1), A, C, T=4)
    tr = trace(substitute(seed(lgssm_model, 0), {"x": x})).get_trace(y, A, C)
    expected = (dist.Normal(jnp.concatenate([jnp.zeros((1, 5)), x[:-1]]) @ A.T, 1.0)
                .log_prob(x).sum() + dist.Normal(x @ C.T, OBS_VAR ** 0.5).log_prob(y).sum())
    got = sum(s["fn"].log_prob(s["value"]).sum() for s in tr.values() if s["type"] == "sample")
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert tr["x"]["value"].shape == (4, 5) and tr["y"]["value"].shape == (4, 3)

    init, trans, means = jnp.array([0.6, 0.4]), jnp.array([[0.9, 0.1], [0.2, 0.8]]), \
        jnp.array([0.0, 3.0])
    z = jnp.array([1, 1, 0])
    y = jnp.array([2.5, 3.1, -0.2])
    tr = trace(substitute(seed(hmm_model, 0), {"z": z})).get_trace(y, init, trans, means)
    got = sum(s["fn"].log_prob(s["value"]).sum() for s in tr.values() if s["type"] == "sample")
    expected = (jnp.log(0.4) + jnp.log(0.8) + jnp.log(0.2)
                + dist.Normal(means[z], 1.0).log_prob(y).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
