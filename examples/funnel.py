"""Neal's funnel, non-centered with NumPyro's ``LocScaleReparam``.

Shows: NumPyro's ``funnel`` example — ``y ~ N(0, 3)``, ``x ~ N(0, exp(y/2))``
in 9 dimensions — whose geometry defeats a mean-field guide in the centered
form; ``numpyro.handlers.reparam`` with ``LocScaleReparam(centered=0)``
rewrites ``x`` as a deterministic function of a standard-normal
``x_decentered`` *without editing the model*, and the ``AutoNormal`` guide
then covers the funnel well. A model without data.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import reparam
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.reparam import LocScaleReparam


def funnel(dim=10):
    y = numpyro.sample("y", dist.Normal(0, 3))
    numpyro.sample("x", dist.Normal(jnp.zeros(dim - 1), jnp.exp(y / 2)))


model = reparam(funnel, config={"x": LocScaleReparam(0)})
guide = AutoNormal(model)


def data():
    return (), {"dim": 10}


__all__ = ["model", "guide", "data", "funnel"]
