"""A two-moon density written with ``numpyro.factor``, fitted by a block neural flow.

Shows: an unnormalized target added to the model as ``numpyro.factor`` (the
"dual moon" potential of NumPyro's ``neutra`` example) and a normalizing-flow
autoguide, ``AutoBNAFNormal`` (block neural autoregressive flow), whose
samples are pathwise through the flow. The ELBO is ``log Z`` minus
``KL(q || p)`` for the moon's normalizer ``Z``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.infer.autoguide import AutoBNAFNormal


def potential(x):
    term1 = 0.5 * ((jnp.linalg.norm(x, axis=-1) - 2) / 0.4) ** 2
    term2 = -0.5 * ((x[..., :1] + jnp.array([-2.0, 2.0])) / 0.6) ** 2
    return term1 - logsumexp(term2, axis=-1)


def model():
    # a flat-ish base measure keeps the target proper; the moon comes from the factor
    x = numpyro.sample("x", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
    numpyro.factor("dual_moon", -potential(x))


guide = AutoBNAFNormal(model, hidden_factors=[4, 4])


def data():
    return (), {}


__all__ = ["model", "guide", "data", "potential"]
