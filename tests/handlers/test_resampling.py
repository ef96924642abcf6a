"""Resampling schemes: unbiased offspring counts, and exact log-probabilities of draws.

The log-probability of a whole ancestor vector (the score term of unbiased
resampling gradients) is checked against the empirical frequency of that
vector over many draws, for every scheme.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stackvi.handlers import resampling
from tests.conftest import assert_unbiased, keys

SCHEMES = resampling.SCHEMES
W = jnp.array([0.05, 0.4, 0.25, 0.3])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_counts_are_unbiased(scheme):
    lw = jnp.log(W) + 3.0  # unnormalized on purpose
    draw = jax.jit(jax.vmap(lambda k: resampling.resample(scheme, k, lw)))
    a = draw(keys(4000, seed=1))
    counts = jax.vmap(lambda row: jnp.bincount(row, length=4))(a)
    assert_unbiased(counts, 4 * W, f"{scheme} offspring counts")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_log_prob_matches_frequencies(scheme):
    k = 3
    w = jnp.array([0.5, 0.2, 0.3])
    lw = jnp.log(w)
    n = 20000
    a = np.asarray(jax.jit(jax.vmap(lambda key: resampling.resample(scheme, key, lw)))(
        keys(n, seed=2)))
    codes = a @ (k ** np.arange(k))
    freq = np.bincount(codes, minlength=k**k) / n
    vectors = np.array(list(itertools.product(range(k), repeat=k)))[:, ::-1]
    probs = np.exp(np.asarray(jax.vmap(lambda v: resampling.log_prob(scheme, lw, v))(
        jnp.asarray(vectors))))
    probs = np.where(probs < 1e-20, 0.0, probs)  # impossible vectors (clamped log 0)
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-5), f"{scheme}: Σ P = {probs.sum()}"
    codes_v = vectors @ (k ** np.arange(k))
    p_by_code = np.zeros(k**k)
    p_by_code[codes_v] = probs
    se = np.sqrt(p_by_code * (1 - p_by_code) / n)
    bad = np.abs(freq - p_by_code) > 4 * se + 1e-12
    assert not bad.any(), (scheme, freq[bad], p_by_code[bad])
    # Sampled vectors never have probability zero.
    assert np.all(p_by_code[np.unique(codes)] > 0)


@pytest.mark.slow
def test_log_prob_is_differentiable_in_the_weights():
    lw = jnp.log(W)
    a = jnp.array([1, 1, 2, 3])
    for scheme in SCHEMES:
        g = jax.grad(lambda lw, s=scheme: resampling.log_prob(s, lw, a))(lw)
        assert np.all(np.isfinite(np.asarray(g))), scheme
    # Multinomial: d/d lw_j Σ_k log softmax(lw)[a_k] = count_j − K w_j.
    g = jax.grad(lambda lw: resampling.log_prob("multinomial", lw, a))(lw)
    np.testing.assert_allclose(g, jnp.bincount(a, length=4) - 4 * W, rtol=1e-5, atol=1e-6)


def test_ess():
    assert float(resampling.ess(jnp.zeros(8))) == pytest.approx(8.0)
    assert float(resampling.ess(jnp.array([0.0, -jnp.inf, -jnp.inf]))) == pytest.approx(1.0)


def test_unknown_scheme_is_an_error():
    with pytest.raises(ValueError, match="unknown resampling scheme 'residual'"):
        resampling.resample("residual", jax.random.PRNGKey(0), jnp.zeros(3))
