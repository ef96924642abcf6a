"""FIVO / variational SMC: the ELBO of a model whose latent path is marginalized by SMC.

``fivo(model, guide, num_particles=K)`` is the ordinary ELBO over the model's
*static* sites (those outside its ``scan``; the guide samples them, or there
are none and the guide is empty), with the model's ``scan`` replaced by a
particle filter (:class:`~stackvi.handlers.smc.smc_marginalize`). The model's
density then contains ``log Ẑ``, the log of an unbiased SMC estimate of the
scan's marginal likelihood, so the objective is a lower bound on
``log p(y)`` that tightens as ``K`` grows (Maddison et al. 2017; Naesseth et
al. 2018; Le et al. 2018). Parameters of the model, of the guide and of a
learnable ``proposal`` are trained jointly by the same gradient estimator:
pathwise through reparameterized samples, score-function terms for the others,
and — with ``resampling_gradient="score"`` — for the ancestor draws too
(unbiased); the default drops that term (standard FIVO: biased, low variance).

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from numpyro.contrib.control_flow import scan
>>> def model(y):
...     rho = numpyro.param("rho", 0.5)
...     def transition(x_prev, y_t):
...         x = numpyro.sample("x", dist.Normal(rho * x_prev, 1.0))
...         numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
...         return x, None
...     scan(transition, 0.0, y)
>>> obj = fivo(model, num_particles=16)
>>> y = jnp.array([0.3, -0.2, 1.1, 0.8])
>>> params = obj.init(jax.random.PRNGKey(0), y)
>>> value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1), y)
>>> sorted(grads), bool(jnp.isfinite(grads["rho"]))
(['rho'], True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from stackvi.estimators.core import Objective
from stackvi.estimators.elbo import elbo
from stackvi.estimators.iwae import iwae
from stackvi.handlers.smc import smc_marginalize

__all__ = ["fivo"]

_BOUNDS = {"elbo": elbo, "iwae": iwae}


def _no_static_latents(*args, **kwargs) -> None:
    """The guide of a model whose only latents are inside its ``scan``."""


def fivo(
    model: Callable,
    guide: Callable | None = None,
    num_particles: int = 100,
    *,
    proposal: Callable | None = None,
    resampling: str = "systematic",
    ess_threshold: float = 1.0,
    resampling_gradient: str = "drop",
    baseline=None,
    num_samples: int = 1,
    bound: str = "elbo",
) -> Objective:
    """The FIVO bound over ``num_samples`` guide samples of the static sites.

    ``num_particles`` is the number of SMC particles ``K``; the SMC options are
    those of :class:`~stackvi.handlers.smc.smc_marginalize`. ``bound="elbo"``
    averages the ``num_samples`` log-weights; ``bound="iwae"`` takes their
    importance-weighted ``logsumexp`` (tighter; the same as ``elbo`` when
    there are no static latents).
    """
    if bound not in _BOUNDS:
        raise ValueError(f"fivo: bound must be one of {sorted(_BOUNDS)}, got {bound!r}.")
    smc_model = smc_marginalize(
        model,
        num_particles=num_particles,
        proposal=proposal,
        resampling=resampling,
        ess_threshold=ess_threshold,
        resampling_gradient=resampling_gradient,
        baseline=baseline,
    )
    guide = guide if guide is not None else _no_static_latents
    obj = _BOUNDS[bound](smc_model, guide, num_samples)
    info = {"num_particles": num_particles, "num_samples": num_samples, "bound": bound,
            "resampling": resampling, "ess_threshold": ess_threshold,
            "resampling_gradient": resampling_gradient}
    return dataclasses.replace(obj, name="fivo", info=info)
