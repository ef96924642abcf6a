"""IWAE on the Normal–Normal model (DESIGN.md §7): exactness, monotonicity in K, convergence."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import stats

from stackvi import estimators
from tests.conftest import assert_unbiased, keys


def _estimates(obj, params, x, n, seed=0):
    return np.asarray(jax.jit(jax.vmap(lambda k: obj.estimate(params, k, x)))(keys(n, seed)))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_exact_posterior_guide_gives_log_evidence_with_zero_variance(normal_normal, k):
    nn = normal_normal
    obj = estimators.iwae(nn.model, nn.guide, num_particles=k)
    est = _estimates(obj, nn.params(*nn.posterior), nn.data, 50)
    np.testing.assert_allclose(est, nn.log_evidence, atol=2e-4)
    assert est.std() < 1e-4


@pytest.mark.slow
def test_iwae_is_nondecreasing_in_k_and_converges_to_log_evidence(normal_normal):
    nn = normal_normal
    mp, sp = nn.posterior
    m, v = mp + 0.5 * sp, 1.3 * sp
    params = nn.params(m, v)
    # χ² divergence of the posterior from q: the delta method puts IWAE's gap at χ²/(2K).
    z = np.linspace(mp - 12 * sp, mp + 12 * sp, 200001)
    ratio = stats.norm.pdf(z, mp, sp) ** 2 / stats.norm.pdf(z, m, v)
    chi2 = float(np.sum(ratio) * (z[1] - z[0])) - 1.0

    n = 2000
    means, ses = [], []
    ks = [1, 10, 100]
    for i, k in enumerate(ks):
        est = _estimates(estimators.iwae(nn.model, nn.guide, k), params, nn.data, n, seed=i)
        if k == 1:
            assert_unbiased(est, nn.elbo(m, v), "IWAE(K=1) vs the closed-form ELBO")
        means.append(est.mean())
        ses.append(est.std(ddof=1) / math.sqrt(n))
        assert est.mean() <= nn.log_evidence + 4 * ses[-1], f"IWAE(K={k}) above log p(x)"
    for i in range(len(ks) - 1):
        diff_se = math.hypot(ses[i], ses[i + 1])
        assert means[i + 1] - means[i] > -4 * diff_se, f"IWAE decreased from K={ks[i]} to {ks[i+1]}"
    assert means[-1] - means[0] > 4 * math.hypot(ses[0], ses[-1])  # it does improve
    gap = nn.log_evidence - means[-1]
    assert gap < chi2 / ks[-1] + 4 * ses[-1], (gap, chi2 / (2 * ks[-1]))


@pytest.mark.parametrize("make", [estimators.iwae, estimators.vimco, estimators.dreg,
                                  estimators.rws])
def test_k_below_one_is_an_error(normal_normal, make):
    with pytest.raises(ValueError, match="positive int"):
        make(normal_normal.model, normal_normal.guide, 0)
