"""Variational objectives and the machinery to write new ones.

Every objective follows one contract (see ``docs/design.md``)::

    obj = estimators.elbo(model, guide, num_particles=1)
    params = obj.init(rng_key, *args, **kwargs)
    value = obj.estimate(params, rng_key, *args, **kwargs)
    value, grads = obj.value_and_grad(params, rng_key, *args, **kwargs)
"""

from stackvi.estimators.core import (
    NonFiniteError,
    Objective,
    log_weight,
    particles,
    score_model,
    surrogate,
)
from stackvi.estimators.elbo import elbo

__all__ = [
    "Objective",
    "NonFiniteError",
    "elbo",
    "log_weight",
    "particles",
    "score_model",
    "surrogate",
]
