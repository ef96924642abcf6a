"""The evidence lower bound, ``E_q[log p(x, z) − log q(z)]``.

It is the shortest program over stackvi's effects: draw ``num_particles``
guide samples (each under its sites' strategies), score the model at them,
average. Because the value keeps its per-site, per-plate structure
(:class:`~stackvi.terms.Terms`), REINFORCE sites get Rao-Blackwellized
learning signals for free.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> def model(x):
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     with numpyro.plate("data", x.shape[0]):
...         numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
>>> def guide(x):
...     m = numpyro.param("m", 0.0)
...     numpyro.sample("z", dist.Normal(m, 1.0))
>>> obj = elbo(model, guide, num_particles=4)
>>> params = obj.init(jax.random.PRNGKey(0), jnp.ones(3))
>>> value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1), jnp.ones(3))
>>> sorted(grads)
['m']
"""

from __future__ import annotations

from collections.abc import Callable

from stackvi.estimators.core import PARTICLES, Objective, log_weight, particles

__all__ = ["elbo"]


def elbo(model: Callable, guide: Callable, num_particles: int = 1) -> Objective:
    """The ELBO averaged over ``num_particles`` vectorized guide samples."""
    from stackvi.estimators.iwae import check_num_particles

    check_num_particles("elbo", num_particles)

    def program(*args, **kwargs):
        weights = particles(log_weight(model, guide), num_particles)(*args, **kwargs)
        return weights.mean(PARTICLES)

    return Objective(program, model, guide, name="elbo", info={"num_particles": num_particles})
