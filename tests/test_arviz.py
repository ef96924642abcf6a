"""``stackvi.to_arviz``: guide draws and posterior predictive as ArviZ ``InferenceData``.

Moments are checked against the guide's own (exact) ones with the tolerance of the
sample size: |mean − exact| ≤ 4 σ/√N (tests/conftest.py explains the 4).
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.autoguide import AutoMultivariateNormal

import stackvi as sv
from stackvi import handlers

pytest.importorskip("arviz", reason="the arviz extra is not installed")

N = 4000
X = jnp.array([0.5, 1.5, 2.0])


def model(x=None):
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    shift = numpyro.deterministic("shift", z + b)
    with numpyro.plate("data", 3):
        numpyro.sample("x", dist.Normal(shift, 1.0), obs=x)


def guide(x=None):
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("logit", 0.0)))
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), numpyro.param("s", 1.0)))


PARAMS = {"logit": jnp.asarray(1.2), "m": jnp.asarray(0.8), "s": jnp.asarray(0.3)}


def within(samples, exact_mean, exact_std):
    assert abs(float(np.mean(samples)) - exact_mean) <= 4 * exact_std / math.sqrt(samples.size)


def test_groups_shapes_and_plate_dims():
    idata = sv.to_arviz(PARAMS, model, guide, X, num_samples=N)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data"}
    assert idata.posterior["z"].shape == (1, N)
    assert idata.posterior["b"].shape == (1, N)
    # The model's deterministic sites, computed from each guide draw, are in the posterior.
    np.testing.assert_allclose(idata.posterior["shift"].values,
                               idata.posterior["z"].values + idata.posterior["b"].values)
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "data")
    assert idata.posterior_predictive["x"].shape == (1, N, 3)
    np.testing.assert_array_equal(idata.observed_data["x"].values, np.asarray(X))


def test_guide_draws_have_the_guide_moments():
    idata = sv.to_arviz(PARAMS, model, guide, X, num_samples=N, rng_key=jax.random.PRNGKey(3))
    z = idata.posterior["z"].values
    within(z, 0.8, 0.3)
    q = float(jax.nn.sigmoid(1.2))
    within(idata.posterior["b"].values, q, math.sqrt(q * (1 - q)))
    # x_i | z, b ~ N(z + b, 1): its predictive mean is m + q, its std sqrt(s² + q(1−q) + 1).
    xs = idata.posterior_predictive["x"].values
    within(xs[..., 0], 0.8 + q, math.sqrt(0.09 + q * (1 - q) + 1.0))
    # The predictive is drawn afresh, not the observed data repeated.
    assert float(np.std(xs[..., 0])) > 0.5


def test_fit_result_and_wrapped_guide():
    obj = sv.estimators.elbo(model, handlers.reinforce(guide, sites=["b"], baseline="ema"))
    result = sv.fit(obj, jax.random.PRNGKey(0), X, num_steps=2, progress=False)
    wrapped = handlers.reinforce(guide, sites=["b"], baseline="ema")
    idata = sv.to_arviz(result, model, wrapped, X, num_samples=50, posterior_predictive=False)
    assert set(idata.groups()) == {"posterior"}
    assert idata.posterior["z"].shape == (1, 50)


@pytest.mark.slow
def test_autoguide_reports_model_sites_not_auxiliary_ones():
    def regression(x=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with numpyro.plate("data", 3):
            numpyro.sample("x", dist.Normal(w.sum(), 1.0), obs=x)

    auto = AutoMultivariateNormal(regression)
    params = sv.estimators.elbo(regression, auto).init(jax.random.PRNGKey(0), X)
    constrained = sv.fit(sv.estimators.elbo(regression, auto), jax.random.PRNGKey(0), X,
                         num_steps=1, progress=False).params
    assert params  # the autoguide has parameters to fit
    idata = sv.to_arviz(constrained, regression, auto, X, num_samples=20)
    assert "w" in idata.posterior and "_auto_latent" not in idata.posterior
    assert idata.posterior["w"].shape == (1, 20, 2)


def test_missing_arviz_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # `import arviz` now raises ImportError
    with pytest.raises(ImportError, match=r"stackvi\[arviz\]"):
        sv.to_arviz(PARAMS, model, guide, X, num_samples=2)
