"""The variational Rényi bound ``L_α`` (Li & Turner, 2016) with K particles.

``L̂_α = 1/(1−α) · log 1/K Σₖ wₖ^{1−α}``, ``wₖ = p(x, zₖ) / q(zₖ)``. α = 0 is
IWAE, α → 1 the ELBO (used exactly at α = 1, with its Rao-Blackwellized
learning signals), α = −∞ would be the max. For α ≥ 0, ``E[L̂_α]`` is a lower
bound on ``log p(x)``; for α < 0 it may exceed it. The gradient is unbiased
for ``E[L̂_α]`` — the objective the program defines — under whatever
strategies the guide's sites carry.

Per data point by default, like :func:`~stackvi.estimators.iwae.iwae` (one bound
per element of the data plates, summed: NumPyro's ``RenyiELBO(alpha)``);
``per_datapoint=False`` gives one bound for the whole batch.

>>> import jax, numpyro, numpyro.distributions as dist
>>> def model():
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)
>>> def guide():
...     numpyro.sample("z", dist.Normal(0.5, 0.5 ** 0.5))
>>> round(float(renyi(model, guide, 0.5, 3).estimate({}, jax.random.PRNGKey(0))), 4)
-1.5155
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stackvi.estimators.core import PARTICLES, Objective, log_weight, particles
from stackvi.estimators.iwae import (
    check_num_particles,
    check_per_datapoint,
    per_point_log_weights,
)

__all__ = ["renyi"]


def renyi(model: Callable, guide: Callable, alpha: float, num_particles: int = 1,
          per_datapoint: bool = True) -> Objective:
    """The Rényi bound ``L_α`` with ``num_particles`` = K samples (α = 1: the ELBO).

    ``per_datapoint=True`` (default): one bound per element of the data plates,
    summed (NumPyro's ``RenyiELBO``); ``False``: one bound for the batch.
    """
    check_num_particles("renyi", num_particles)
    check_per_datapoint("renyi", per_datapoint)
    alpha = float(alpha)
    info = {"num_particles": num_particles, "alpha": alpha, "per_datapoint": per_datapoint}

    if alpha == 1.0:
        def program(*args, **kwargs):
            return particles(log_weight(model, guide), num_particles)(*args, **kwargs).mean(
                PARTICLES)
    else:
        def bound(lw):
            return (jax.nn.logsumexp((1.0 - alpha) * lw, axis=0)
                    - jnp.log(num_particles)) / (1.0 - alpha)

        def program(*args, **kwargs):
            pp = per_point_log_weights(model, guide, num_particles, per_datapoint)(
                *args, **kwargs)
            return pp.bound(bound)

    return Objective(program, model, guide, name=f"renyi({alpha:g})", info=info)
