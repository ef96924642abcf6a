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
from stackvi.estimators.dreg import dreg
from stackvi.estimators.elbo import elbo
from stackvi.estimators.hvi import diwhvi, hvi, iwhvi
from stackvi.estimators.iwae import iwae
from stackvi.estimators.renyi import renyi
from stackvi.estimators.rws import rws
from stackvi.estimators.signals import LearningSignal
from stackvi.estimators.vimco import vimco

__all__ = [
    "Objective",
    "NonFiniteError",
    "elbo",
    "log_weight",
    "particles",
    "score_model",
    "surrogate",
    "LearningSignal",
    "iwae",
    "renyi",
    "vimco",
    "dreg",
    "rws",
    "hvi",
    "iwhvi",
    "diwhvi",
]
