"""The importance-weighted bound (IWAE / IWELBO) with K particles.

``log 1/K Σₖ p(x, zₖ) / q(zₖ)``, ``zₖ ~ q`` independently. It is a scalar
(``logsumexp`` is not linear in the particles), so every score-function site
gets the whole estimate as its learning signal; pathwise sites differentiate
through it. K = 1 is the ELBO; the bound is nondecreasing in K and tends to
``log p(x)``. For lower-variance score-function gradients use
:func:`~stackvi.estimators.vimco.vimco`; for better pathwise guide gradients
:func:`~stackvi.estimators.dreg.dreg`.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> def model():
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)
>>> def guide():                         # the exact posterior N(1/2, 1/√2)
...     numpyro.sample("z", dist.Normal(0.5, 0.5 ** 0.5))
>>> obj = iwae(model, guide, num_particles=5)
>>> round(float(obj.estimate({}, jax.random.PRNGKey(0))), 4)   # log p(x) = log N(1; 0, √2)
-1.5155
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from stackvi.estimators.core import PARTICLES, Objective, log_weight, particles

__all__ = ["iwae", "check_num_particles"]


def check_num_particles(name: str, num: int, what: str = "num_particles") -> None:
    """A clear error for K < 1 or not an integer (NumPy integers are fine, ``True`` is not)."""
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
        raise ValueError(
            f"{name}: {what} must be a positive int (the number of importance samples K), "
            f"got {num!r}."
        )


def log_weights(model: Callable, guide: Callable, num: int) -> Callable:
    """``(*args) -> (K,)`` per-particle log-weights ``log p(x, zₖ) − log q(zₖ)``."""

    def run(*args, **kwargs):
        return particles(log_weight(model, guide), num)(*args, **kwargs).per((PARTICLES,))

    return run


def iwae(model: Callable, guide: Callable, num_particles: int = 1) -> Objective:
    """The IWAE bound with ``num_particles`` = K importance samples."""
    check_num_particles("iwae", num_particles)

    def program(*args, **kwargs):
        lw = log_weights(model, guide, num_particles)(*args, **kwargs)
        return jax.nn.logsumexp(lw) - jnp.log(num_particles)

    return Objective(program, model, guide, name="iwae", info={"num_particles": num_particles})
