"""Variational objectives and the machinery to write new ones.

Every objective follows one contract (see ``docs/design.md``)::

    obj = estimators.elbo(model, guide, num_particles=1)
    params = obj.init(rng_key, *args, **kwargs)
    value = obj.estimate(params, rng_key, *args, **kwargs)
    value, grads = obj.value_and_grad(params, rng_key, *args, **kwargs)

Built-ins, each a short program in its own module: ``elbo``, ``iwae``,
``renyi``, ``vimco``, ``dreg``, ``rws`` and, over a
:func:`stackvi.marginal.marginal` guide, ``hvi``, ``iwhvi``, ``diwhvi``.

Writing your own: a program runs guides (``simulate``) and models
(``score_model`` / ``log_weight``), possibly over ``particles``, and returns
``Terms`` (linear; Rao-Blackwellized score-function signals), a scalar (every
score-function site sees the whole value) or a :class:`LearningSignal`
(per-particle signals); ``Objective(program, model, guide)`` makes it an
estimator. ``docs/objectives.md`` walks through three (IWAE from scratch,
CUBO, a KL-regularized reward):

>>> import jax, jax.numpy as jnp
>>> def iwae_from_scratch(model, guide, K):
...     def program(*args, **kwargs):
...         lw = particles(log_weight(model, guide), K)(*args, **kwargs)
...         return jax.nn.logsumexp(lw.per(("particles",))) - jnp.log(K)
...     return Objective(program, model, guide, name="iwae_from_scratch")
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
from stackvi.estimators.fivo import fivo
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
    "fivo",
]
