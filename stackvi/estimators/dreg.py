"""Doubly-reparameterized IWAE gradients (DReG; Tucker, Lawson, Gu & Maddison, 2019).

The value is the IWAE estimate ``L̂ = log 1/K Σₖ wₖ``; the gradient is that of
``E[L̂]``, estimated with lower variance for the guide:

* guide params φ: ``Σₖ w̄ₖ² ∂ log wₖ/∂zₖ · ∂zₖ/∂φ`` — ``log q`` evaluated with
  φ held fixed (:class:`~stackvi.handlers.stop.stop_params`), so only the
  path through the sample ``zₖ`` is differentiated;
* model params θ: ``Σₖ w̄ₖ ∇_θ log p(x, zₖ)`` at fixed ``zₖ`` (IWAE's own).

Both come out of one surrogate: ``Σₖ sg(w̄ₖ²) log w̃ₖ + Σₖ sg(w̄ₖ − w̄ₖ²) log p(x, sg zₖ)``
with ``log w̃ₖ = log p(x, zₖ) − log q_{sg φ}(zₖ)``. Every guide site must be
pathwise (the identity behind DReG needs ``zₖ`` to be a reparameterized
function of φ): a discrete or score-function site is an error — use
:func:`~stackvi.estimators.vimco.vimco` there. A param shared by model and
guide gets the sum of both rules.

With the exact posterior as guide every ``log wₖ`` is constant in ``zₖ``, so
the guide gradient is exactly zero sample by sample (IWAE's is zero only on
average):

>>> import jax, numpyro, numpyro.distributions as dist
>>> def model():
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)
>>> def guide():
...     numpyro.sample("z", dist.Normal(numpyro.param("m", 0.5), 0.5 ** 0.5))
>>> obj = dreg(model, guide, num_particles=5)
>>> _, grads = obj.value_and_grad(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> abs(float(grads["m"])) < 1e-5
True
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.handlers import substitute, trace

from stackvi.estimators.core import Objective, particles
from stackvi.estimators.iwae import (
    check_num_particles,
    check_per_datapoint,
    data_plates,
    plate_sizes,
)
from stackvi.gradients.scoring import model_density
from stackvi.gradients.strategy import simulate
from stackvi.handlers.density import trace_terms
from stackvi.handlers.stop import stop_params

__all__ = ["dreg"]


def _base_name(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


def _check_pathwise(guide_trace: dict) -> None:
    for name, site in guide_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        strategy = site["infer"].get("strategy")
        if strategy != "reparam":
            raise ValueError(
                f"dreg: guide site '{name}' ({_base_name(site['fn'])}) is sampled with strategy "
                f"'{strategy}', but doubly-reparameterized gradients need a pathwise "
                "(reparameterized) sample at every guide site. Use estimators.vimco (or iwae) "
                "for discrete / score-function sites, or a reparameterizable relaxation."
            )


def dreg(model: Callable, guide: Callable, num_particles: int = 1,
         per_datapoint: bool = True) -> Objective:
    """The IWAE bound with doubly-reparameterized guide gradients (K = ``num_particles``).

    Per data point by default, as :func:`~stackvi.estimators.iwae.iwae` (the
    weights ``w̄`` normalized per element of the data plates);
    ``per_datapoint=False``: one bound for the batch.
    """
    check_num_particles("dreg", num_particles)
    check_per_datapoint("dreg", per_datapoint)
    layout: dict = {}

    def one(*args, **kwargs):
        guide_trace = simulate(guide, *args, **kwargs)
        _check_pathwise(guide_trace)
        log_p_terms = model_density(model, guide_trace, *args, **kwargs)
        lw_terms = log_p_terms - trace_terms(guide_trace)
        plates = layout["plates"] = data_plates(lw_terms) if per_datapoint else ()
        log_p = log_p_terms.per(plates)
        log_q = trace_terms(guide_trace).per(plates)
        values = {n: s["value"] for n, s in guide_trace.items()
                  if s["type"] == "sample" and not s["is_observed"]}
        # log q at the same (differentiable) sample, with the guide's params held fixed
        with stop_params():
            fixed_q = trace(substitute(guide, data=values)).get_trace(*args, **kwargs)
        # log p at the sample held fixed: the model's params' IWAE gradient
        fixed_z = {n: {**s, "value": jax.lax.stop_gradient(s["value"])}
                   for n, s in guide_trace.items()}
        log_p_fixed = model_density(model, fixed_z, *args, **kwargs).per(plates)
        return log_p - log_q, log_p - trace_terms(fixed_q).per(plates), log_p_fixed

    def program(*args, **kwargs):
        sizes = plate_sizes()
        with sizes:
            lw, lw_path, log_p_fixed = particles(one, num_particles)(*args, **kwargs)
        scale = sizes.scale(layout["plates"])  # subsampled data plates: weights unscaled
        w = jax.nn.softmax(jax.lax.stop_gradient(lw) / scale, axis=0)
        value = scale * jnp.sum(jax.nn.logsumexp(lw / scale, axis=0) - jnp.log(num_particles))
        s = jnp.sum(w**2 * lw_path) + jnp.sum((w - w**2) * log_p_fixed)
        sg = jax.lax.stop_gradient
        return sg(value) + (s - sg(s))

    return Objective(program, model, guide, name="dreg",
                     info={"num_particles": num_particles, "per_datapoint": per_datapoint})
