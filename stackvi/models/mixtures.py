"""Discrete-latent models for the gradient-estimator benchmark and tutorial.

Two mixtures, each with a discrete assignment per data point and continuous
latents with a pathwise (reparameterized) guide, so every run *mixes*
strategies: the chosen one for the assignments ``z`` and ``reparam`` for the
rest.

* :func:`bernoulli_mixture` — a mixture of K product-Bernoulli images
  (binarized digits): ``θ_k ~ N(0, I)`` pixel logits, ``z_n ~ Cat(1/K)``,
  ``x_n | z_n ~ Bernoulli(logits=θ_{z_n})``. Guide: ``θ`` Normal (mean field),
  ``z_n`` Categorical with logits ``x_n W + c`` (amortized, linear).
* :func:`gmm` — a 1-D Gaussian mixture: ``μ_k ~ N(0, 3²)``, ``z_n ~ Cat(π)``,
  ``x_n ~ N(μ_{z_n}, σ²)``. Guide: ``μ`` Normal, ``z_n`` free logits.

Every guide takes ``with_z``: with ``False`` the guide has no ``z``, and
stackvi sums the assignments out of the model exactly (model-side
enumeration), as NumPyro's ``TraceEnum_ELBO`` does with
``config_enumerate(model)``.

>>> import jax, jax.numpy as jnp
>>> from stackvi import estimators
>>> x = jnp.array([-2.0, 0.1, 2.5])
>>> obj = estimators.elbo(gmm.model, gmm.guide)
>>> params = obj.init(jax.random.PRNGKey(0), x)
>>> sorted(params)
['m', 's', 'zl']
"""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.ops.indexing import Vindex

__all__ = ["bernoulli_mixture", "gmm", "digits", "gmm_data"]

K_DIGITS = 10


def _bm_model(x, k: int = K_DIGITS):
    n, d = x.shape
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0).expand([k, d]).to_event(2))
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Categorical(jnp.ones(k) / k))
        # Vindex, as in NumPyro's enumeration examples: theta may carry leading dims (an
        # enumerated or branched layout) that the lookup must broadcast over.
        numpyro.sample("x", dist.Bernoulli(logits=Vindex(theta)[..., z, :]).to_event(1), obs=x)


def _bm_guide(x, k: int = K_DIGITS, with_z: bool = True):
    n, d = x.shape
    m = numpyro.param("theta_loc", jnp.zeros((k, d)))
    s = numpyro.param("theta_scale", 0.1 * jnp.ones((k, d)), constraint=constraints.positive)
    numpyro.sample("theta", dist.Normal(m, s).to_event(2))
    if with_z:
        w = numpyro.param("W", jnp.zeros((d, k)))
        c = numpyro.param("c", jnp.zeros(k))
        with numpyro.plate("data", n):
            numpyro.sample("z", dist.Categorical(logits=x @ w + c))


bernoulli_mixture = SimpleNamespace(model=_bm_model, guide=_bm_guide, z_params=("W", "c"),
                                    loc_params=("theta_loc",))

GMM_PI = jnp.array([0.5, 0.3, 0.2])
GMM_SIGMA = 0.7


def _gmm_model(x):
    locs = numpyro.sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(GMM_PI))
        numpyro.sample("x", dist.Normal(locs[z], GMM_SIGMA), obs=x)


def _gmm_guide(x, with_z: bool = True):
    m = numpyro.param("m", jnp.array([-1.0, 0.0, 1.0]))
    s = numpyro.param("s", 0.2 * jnp.ones(3), constraint=constraints.positive)
    numpyro.sample("locs", dist.Normal(m, s).to_event(1))
    if with_z:
        logits = numpyro.param("zl", jnp.zeros((x.shape[0], 3)))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits))


gmm = SimpleNamespace(model=_gmm_model, guide=_gmm_guide, z_params=("zl",), loc_params=("m",))


def digits(n: int | None = None):
    """The first ``n`` binarized 8×8 digits as a ``(n, 64)`` float array."""
    from stackvi.data import load_digits

    x, _ = load_digits()
    return jnp.asarray(x[:n] if n else x)


def gmm_data(n: int, seed: int = 0):
    """``n`` points from the mixture with locations (−2, 0.5, 3)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    z = rng.choice(3, size=n, p=np.asarray(GMM_PI))
    return jnp.asarray(np.array([-2.0, 0.5, 3.0])[z] + GMM_SIGMA * rng.randn(n), jnp.float32)
