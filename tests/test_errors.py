"""Bad input gets a clear error that names the site, the distribution and what to do instead.

Structural errors are raised while tracing, so they are checked both eagerly and under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, primitives
from stackvi.estimators import NonFiniteError, Objective, particles
from stackvi.handlers import reparam, strategies

KEY = jax.random.PRNGKey(0)
X = jnp.array([0.2, 1.4, -0.3])


def model(x):
    b = numpyro.sample("b", dist.Bernoulli(0.4))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z + b, 1.0), obs=x)


def guide(x):
    numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(numpyro.param("eta", 0.1))))
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))


def run_both(obj, params=None):
    """Evaluate eagerly, then under jit: both must raise the same error."""
    params = obj.init(KEY, X) if params is None else params
    for fn in (obj.value_and_grad, jax.jit(obj.value_and_grad)):
        fn(params, KEY, X)


def raises_both(obj, exc, match, params=None):
    params = {"eta": jnp.float32(0.1), "m": jnp.float32(0.0)} if params is None else params
    for fn in (obj.value_and_grad, jax.jit(obj.value_and_grad)):
        with pytest.raises(exc, match=match):
            fn(params, KEY, X)


def test_pathwise_forced_on_a_non_reparameterizable_site():
    match = r"site 'b' \(Bernoulli\w*\) has no reparameterized sampler.*Use reinforce"
    raises_both(estimators.elbo(model, reparam(guide, sites=["b"])), ValueError, match)
    raises_both(estimators.elbo(model, strategies(guide, {"reparam": ["b"]})), ValueError, match)


def test_guide_missing_a_model_latent():
    # (a missing *discrete* latent is summed out exactly; a continuous one cannot be)
    def partial_guide(x):
        numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(numpyro.param("eta", 0.1))))

    raises_both(estimators.elbo(model, partial_guide), ValueError,
                r"model latent site 'z' \(Normal, shape \(\)\) is not sampled by the guide")


def test_guide_site_the_model_lacks():
    def extra_guide(x):
        guide(x)
        numpyro.sample("w", dist.Normal(0.0, 1.0))

    raises_both(estimators.elbo(model, extra_guide), ValueError,
                r"guide site 'w' \(Normal, shape \(\)\) does not exist in the model.*is_auxiliary")

    def aux_guide(x):
        guide(x)
        numpyro.sample("w", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})

    run_both(estimators.elbo(model, aux_guide))  # marked auxiliary: allowed


def test_shape_mismatch_between_model_and_guide():
    def wide_guide(x):
        numpyro.sample("b", dist.Bernoulli(jax.nn.sigmoid(numpyro.param("eta", 0.1))))
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0).expand([3]))

    raises_both(estimators.elbo(model, wide_guide), ValueError,
                r"site 'z': the guide's value has shape \(3,\).*model's Normal has shape \(\)")


def test_guide_sampling_an_observed_site():
    def bad_guide(x):
        guide(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(0.0, 1.0))

    raises_both(estimators.elbo(model, bad_guide), ValueError,
                "guide samples site 'x' which the model observes")


def test_non_finite_objective_names_the_site():
    def lognormal_model(x):
        numpyro.sample("z", dist.LogNormal(0.0, 1.0))

    def normal_guide(x):
        numpyro.sample("z", dist.Normal(numpyro.param("m", -3.0), 0.1))

    obj = estimators.elbo(lognormal_model, normal_guide)
    params = obj.init(KEY, X)
    # The documented behaviour: estimate/value_and_grad return NaN (they are jit-able and
    # cannot raise on values); check_finite / diagnose / fit name the culprit.
    assert not jnp.isfinite(jax.jit(obj.estimate)(params, KEY, X))
    assert not jnp.isfinite(obj.estimate(params, KEY, X))
    diag = obj.diagnose(params, KEY, X)
    assert not jnp.isfinite(diag["p:z"]) and jnp.isfinite(diag["q:z"])
    with pytest.raises(NonFiniteError, match=r"elbo is not finite.*p:z = (nan|-inf).*support"):
        obj.check_finite(params, KEY, X)

    def penalized_model(x):
        lognormal_model(x)
        numpyro.factor("penalty", -numpyro.param("w", 1.0) ** 2)

    obj = estimators.elbo(penalized_model, lambda x: numpyro.sample("z", dist.LogNormal(0., 1.)))
    with pytest.raises(NonFiniteError, match=r"p:penalty = nan.*Non-finite parameters: \['w'\]"):
        obj.check_finite({"w": jnp.float32(jnp.nan)}, KEY, X)


def test_missing_param_is_an_error_not_a_reinit():
    obj = estimators.elbo(model, guide)
    with pytest.raises(KeyError, match=r"param site 'eta' is not in the params dict.*init"):
        obj.value_and_grad({"m": jnp.float32(0.0)}, KEY, X)


def test_misc_bad_input():
    with pytest.raises(ValueError, match="positive int"):
        particles(lambda: None, 0)
    with pytest.raises(ValueError, match=r"observe\('x', Normal, value=None\)"):
        primitives.observe("x", dist.Normal(0.0, 1.0), None)

    def vector_program(x):
        return jnp.ones(3)

    obj = Objective(vector_program, model, guide)
    with pytest.raises(ValueError, match=r"must return Terms or a scalar, got shape \(3,\)"):
        obj.value_and_grad({"eta": jnp.float32(0.1), "m": jnp.float32(0.0)}, KEY, X)
