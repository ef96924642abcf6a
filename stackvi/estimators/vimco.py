"""VIMCO: the IWAE bound with leave-one-out control variates for score-function sites.

Mnih & Rezende (2016). The value is the IWAE estimate ``L̂ = log 1/K Σⱼ wⱼ``.
A score-function site of particle *k* gets the learning signal
``L̂ − L̂₋ₖ`` instead of ``L̂``, where ``L̂₋ₖ`` replaces ``log wₖ`` by the mean of
the other particles' log-weights. ``L̂₋ₖ`` does not depend on particle *k*'s
sample, so the estimator stays unbiased (a baseline), and it removes most of
the signal's variance. Pathwise sites are unaffected (they differentiate
through ``L̂``). Needs K ≥ 2 (with K = 1 there is nothing to leave out).

The program returns a :class:`~stackvi.estimators.signals.LearningSignal`:
sites drawn per particle (inside the K particles) get their particle's
signal, anything drawn outside the particles gets ``L̂``.

>>> import jax, numpyro, numpyro.distributions as dist
>>> def model():
...     b = numpyro.sample("b", dist.Bernoulli(0.5))
...     numpyro.sample("x", dist.Normal(b, 1.0), obs=1.0)
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("eta", 0.0)))
>>> obj = vimco(model, guide, num_particles=4)
>>> params = obj.init(jax.random.PRNGKey(0))
>>> value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1))
>>> sorted(grads)
['eta']
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stackvi.estimators.core import Objective
from stackvi.estimators.iwae import (
    check_num_particles,
    check_per_datapoint,
    per_point_log_weights,
)
from stackvi.estimators.signals import LearningSignal

__all__ = ["vimco", "leave_one_out_signal"]


def leave_one_out_signal(lw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(L̂, L̂ − L̂₋ₖ)`` for log-weights ``lw`` of shape (K, ...), K ≥ 2 (per element of
    the trailing axes: ``L̂`` has their shape, the signal ``lw``'s).

    >>> import jax.numpy as jnp
    >>> value, signal = leave_one_out_signal(jnp.zeros(3))
    >>> float(value), signal.tolist()
    (0.0, [0.0, 0.0, 0.0])
    """
    lw = jax.lax.stop_gradient(lw)
    k = lw.shape[0]
    # log-mean of the others, substituted for each particle's own log-weight
    others_mean = (jnp.sum(lw, axis=0) - lw) / (k - 1)
    eye = jnp.eye(k, dtype=bool).reshape((k, k) + (1,) * (lw.ndim - 1))
    replaced = jnp.where(eye, others_mean[:, None], lw[None, :])  # row k: lw with k replaced
    loo = jax.nn.logsumexp(replaced, axis=1) - jnp.log(k)
    value = jax.nn.logsumexp(lw, axis=0) - jnp.log(k)
    return value, value - loo


def vimco(model: Callable, guide: Callable, num_particles: int = 2,
          per_datapoint: bool = True) -> Objective:
    """The IWAE bound with VIMCO's leave-one-out learning signals (K ≥ 2 particles).

    Per data point by default, as :func:`~stackvi.estimators.iwae.iwae` (the
    leave-one-out signals too: particle k of element n gets ``L̂ₙ − L̂ₙ,₋ₖ``);
    ``per_datapoint=False``: one bound for the batch.
    """
    check_num_particles("vimco", num_particles)
    check_per_datapoint("vimco", per_datapoint)
    if num_particles < 2:
        raise ValueError(
            f"vimco needs num_particles >= 2 (its control variate for particle k is built "
            f"from the other particles), got {num_particles}; use iwae for K = 1."
        )

    def program(*args, **kwargs):
        pp = per_point_log_weights(model, guide, num_particles, per_datapoint)(*args, **kwargs)
        _, signal = leave_one_out_signal(pp.lw)
        each = jax.nn.logsumexp(pp.lw, axis=0) - jnp.log(num_particles)
        return LearningSignal(pp.scale * jnp.sum(each), pp.scale * signal, pp.names)

    return Objective(program, model, guide, name="vimco",
                     info={"num_particles": num_particles, "per_datapoint": per_datapoint})
