"""``smc_marginalize`` against exact likelihoods (DESIGN.md §7).

* Linear-Gaussian state space (Dx=5, Dy=3, T=10) against the Kalman filter:
  ``E[Ẑ/Z] = 1`` for every resampling scheme, ``E[log Ẑ] ≤ log Z`` and
  nondecreasing in ``K``, filtered means.
* Discrete HMM against the forward algorithm, including adaptive resampling.
* The handler's contract: the scan's sites are replaced by one factor, jit
  equals eager, vmap over sequences, outside conditioning, clear errors.

Every statistical check is a z-test at fixed keys with σ̂ from the same samples
(``tests/conftest.py``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.handlers import condition, seed, trace

from stackvi.gradients import recording
from stackvi.handlers.smc import smc_filter, smc_marginalize
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
from tests.conftest import Z_SIGMAS, assert_unbiased, keys

A, C = lgssm_matrices()
_, Y = lgssm_simulate(jax.random.PRNGKey(0), A, C, T=10)
LOG_Z, MEANS = kalman(Y, A, C)

HMM = dict(init=jnp.array([0.6, 0.3, 0.1]),
           trans=jnp.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]),
           means=jnp.array([-1.0, 0.0, 2.0]))
_, YH = hmm_simulate(jax.random.PRNGKey(1), T=20, **HMM)
HMM_LOG_Z = hmm_forward(YH, **HMM)


def optimal_proposal(A, C, r=OBS_VAR):
    """The locally optimal proposal p(x_t | x_{t−1}, y_t) of the LGSSM (low-variance weights).

    Its covariance ``(I + CᵀC/r)⁻¹`` is diagonal because ``C = [I | 0]``.
    """
    cov = jnp.linalg.inv(jnp.eye(A.shape[0]) + C.T @ C / r)
    sd = jnp.sqrt(jnp.diag(cov))

    def proposal(x_prev, y_t):
        numpyro.sample("x", dist.Normal(cov @ (A @ x_prev + C.T @ y_t / r), sd).to_event(1))

    return proposal


def log_evidence(model, args, num_particles, n, seed=0, **opts) -> np.ndarray:
    """``n`` independent log Ẑ, one per key, jitted and vmapped."""
    run = jax.jit(jax.vmap(lambda k: smc_filter(model, k, *args, num_particles=num_particles,
                                                **opts)[0].log_evidence))
    return np.asarray(run(keys(n, seed)), np.float64)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("scheme,ess_threshold", [("multinomial", 1.0), ("stratified", 0.5),
                                                  ("systematic", 1.0)])
@pytest.mark.slow
def test_lgssm_evidence_is_unbiased(scheme, ess_threshold):
    lz = log_evidence(lgssm_model, (Y, A, C), 8, 1000, seed=1, resampling=scheme,
                      ess_threshold=ess_threshold, proposal=optimal_proposal(A, C))
    assert_unbiased(np.exp(lz - float(LOG_Z)), 1.0, f"{scheme} (ESS ≤ {ess_threshold}·K): Ẑ/Z")


@pytest.mark.slow
def test_lgssm_log_evidence_is_a_bound_nondecreasing_in_k():
    n = 100
    stats = []
    for k in (8, 64, 512):
        lz = log_evidence(lgssm_model, (Y, A, C), k, n, seed=2)  # bootstrap proposal
        stats.append((k, lz.mean(), lz.std(ddof=1) / math.sqrt(n)))
    for k, mean, se in stats:
        assert mean - float(LOG_Z) <= Z_SIGMAS * se, f"K={k}: E[log Ẑ] above log Z"
    for (k1, m1, s1), (k2, m2, s2) in zip(stats, stats[1:], strict=False):
        assert m2 - m1 >= -Z_SIGMAS * math.hypot(s1, s2), f"E[log Ẑ] decreased from K={k1} to {k2}"
    # The bound tightens visibly over this range (bootstrap, sharp observations).
    assert stats[-1][1] - stats[0][1] > Z_SIGMAS * math.hypot(stats[0][2], stats[-1][2])


def uniform_proposal(z_prev, y_t):
    """A deliberately poor discrete proposal: any full-support proposal keeps Ẑ unbiased."""
    numpyro.sample("z", dist.Categorical(probs=jnp.ones(3) / 3))


@pytest.mark.parametrize("scheme,ess_threshold,proposal", [
    ("systematic", 1.0, None),
    ("multinomial", 1.0, uniform_proposal),
    pytest.param("multinomial", 0.5, None, marks=pytest.mark.slow)])
@pytest.mark.slow
def test_hmm_evidence_against_forward_algorithm(scheme, ess_threshold, proposal):
    lz = log_evidence(hmm_model, (YH, *HMM.values()), 32, 500, seed=3, resampling=scheme,
                      ess_threshold=ess_threshold, proposal=proposal)
    assert_unbiased(np.exp(lz - float(HMM_LOG_Z)), 1.0,
                    f"HMM {scheme}/{ess_threshold}/{proposal}: Ẑ/Z")


@pytest.mark.slow
def test_filtered_means_match_kalman():
    run = jax.jit(jax.vmap(lambda k: smc_filter(
        lgssm_model, k, Y, A, C, num_particles=500,
        proposal=optimal_proposal(A, C))[0].filtered_mean()))
    means = np.asarray(run(keys(200, seed=4)), np.float64)  # [runs, T, dx]
    # Self-normalized: bias O(1/K), below the Monte Carlo error of the mean of 200 runs.
    assert_unbiased(means, np.asarray(MEANS), "filtered means")


# --------------------------------------------------------------------------- handler contract


def _traced(fn):
    """Run ``fn`` under tracing only (no compilation): structure tests need no numbers."""
    out = []
    jax.make_jaxpr(lambda: out.append(fn()) or 0.0)()
    return out[0]


@pytest.mark.slow
def test_scan_sites_are_replaced_by_one_factor():
    @jax.jit
    def run(key):
        with smc_marginalize(num_particles=50) as smc:
            tr = trace(seed(lgssm_model, key)).get_trace(Y, A, C)
        site = tr["smc"]
        assert list(tr) == ["smc"] and site["is_observed"]
        return site["fn"].log_prob(site["value"]), smc.results[0]

    factor, result = run(jax.random.PRNGKey(0))
    np.testing.assert_allclose(factor, result.log_evidence)
    assert result.particles.shape == (10, 50, 5)
    assert result.log_weights.shape == result.ancestors.shape == (10, 50)
    assert result.ess.shape == result.resampled.shape == (10,)
    np.testing.assert_allclose(jnp.exp(result.log_weights).sum(-1), 1.0, rtol=1e-5)
    # The model gets one path of the particle system, with the scan's shapes.
    path = _traced(lambda: seed(smc_marginalize(lgssm_model, num_particles=50), 0)(Y, A, C))
    assert path.shape == (10, 5)


@pytest.mark.slow
def test_jit_equals_eager():
    def run(key):
        return smc_filter(hmm_model, key, YH[:5], *HMM.values(), num_particles=8,
                          ess_threshold=0.5)[0].log_evidence

    key = jax.random.PRNGKey(7)
    np.testing.assert_allclose(run(key), jax.jit(run)(key), rtol=1e-5)


@pytest.mark.slow
def test_vmap_over_independent_sequences():
    ys = jnp.stack([Y, Y + 0.5, -Y])

    @jax.jit
    def run(ys, key):
        def one(y):
            return smc_filter(lgssm_model, key, y, A, C, num_particles=8)[0].log_evidence

        return jax.vmap(one)(ys), jnp.stack([one(y) for y in ys])

    batched, single = run(ys, jax.random.PRNGKey(3))
    np.testing.assert_allclose(batched, single, rtol=1e-4)


def test_outside_conditioning_equals_observing():
    def model(y=None, T=10):
        def transition(x_prev, y_t):
            x = numpyro.sample("x", dist.Normal(0.8 * x_prev, 1.0))
            numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
            return x, None

        scan(transition, 0.0, y, length=T)

    @jax.jit
    def run(y, key):
        observed = smc_filter(model, key, y, num_particles=64)[0].log_evidence
        conditioned = smc_filter(condition(model, {"y": y}), key, num_particles=64)[0]
        return observed, conditioned.log_evidence

    observed, conditioned = run(Y[:, 0], jax.random.PRNGKey(5))
    np.testing.assert_allclose(observed, conditioned, rtol=1e-6)


def _traced(fn):
    """Run ``fn`` under tracing only (no compilation): structure tests need no numbers."""
    out = []
    jax.make_jaxpr(lambda: out.append(fn()) or 0.0)()
    return out[0]


def test_score_nodes():
    def labels(model, *args, **opts):
        with recording() as rec:
            seed(smc_marginalize(model, num_particles=4, **opts), 0)(*args)
        return sorted(n.name for n in rec.records)

    assert _traced(lambda: labels(lgssm_model, Y, A, C)) == []  # reparameterized: pathwise
    # Discrete latents: their score term is kept, never silently dropped.
    assert _traced(lambda: labels(hmm_model, YH, *HMM.values())) == ["smc:latents"]
    assert _traced(lambda: labels(lgssm_model, Y, A, C, resampling_gradient="score")) == [
        "smc:ancestors"]


def test_two_scans_get_two_sites():
    def model(y):
        lgssm_model(y, A, C)
        lgssm_model(y, A, C)

    tr = _traced(lambda: trace(seed(smc_marginalize(model, num_particles=4), 0)).get_trace(Y))
    assert list(tr) == ["smc", "smc_1"]


# --------------------------------------------------------------------------- errors


def test_model_without_scan_is_an_error():
    def model(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="ran no numpyro.contrib.control_flow.scan"):
        seed(smc_marginalize(model, num_particles=4), 0)(1.0)


def test_carry_without_a_fixed_per_particle_shape_is_an_error():
    def model(y):
        def transition(x_prev, y_t):  # the carry grows a dimension: not one particle's state
            x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
            numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
            return jnp.stack([x, x]), None

        scan(transition, 0.0, y)

    with pytest.raises(ValueError, match=r"carry with leaf shapes \[\(2,\)\].*particle dimension"):
        seed(smc_marginalize(model, num_particles=4), 0)(Y[:, 0])


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_num_particles_below_one_is_an_error(k):
    with pytest.raises(ValueError, match="num_particles must be an int >= 1"):
        smc_marginalize(lgssm_model, num_particles=k)


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="unknown resampling scheme 'residual'"):
        smc_marginalize(lgssm_model, resampling="residual")
    with pytest.raises(ValueError, match="ess_threshold must be in"):
        smc_marginalize(lgssm_model, ess_threshold=2.0)
    with pytest.raises(ValueError, match="resampling_gradient must be"):
        smc_marginalize(lgssm_model, resampling_gradient="pathwise")


def test_proposal_must_sample_the_transition_latents():
    def wrong(x_prev, y_t):
        numpyro.sample("z", dist.Normal(x_prev, 1.0).to_event(1))

    match = r"not in the transition: \['z'\].*does not sample: \['x'\]"
    with pytest.raises(ValueError, match=match):
        seed(smc_marginalize(lgssm_model, num_particles=4, proposal=wrong), 0)(Y, A, C)


def test_unseeded_model_is_an_error():
    with pytest.raises(RuntimeError, match="no random key"), smc_marginalize(num_particles=4):
        lgssm_model(Y, A, C)
