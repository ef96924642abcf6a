"""stackvi: programmable variational inference for JAX, on unchanged NumPyro models.

Models and guides are NumPyro functions; handlers choose how each sample is
differentiated; an objective is a program over those effects whose
``value_and_grad`` is an unbiased gradient estimator.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> import stackvi as sv
>>> def model():
...     b = numpyro.sample("b", dist.Bernoulli(0.5))
...     numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=1.5)
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("logit", 0.3)))
>>> exact = sv.estimators.elbo(model, sv.handlers.enumerate(guide))    # exact sum over b
>>> sampled = sv.estimators.elbo(model, sv.handlers.reinforce(guide), num_particles=4000)
>>> params = exact.init(jax.random.PRNGKey(0))
>>> e, ge = exact.value_and_grad(params, jax.random.PRNGKey(1))
>>> s, gs = sampled.value_and_grad(params, jax.random.PRNGKey(1))
>>> round(float(ge["logit"]), 4)   # σ'(0.3)·(log p(x, b=1) − log p(x, b=0) − 0.3)
0.1711
>>> bool(abs(gs["logit"] - ge["logit"]) < 0.05)   # 4 standard errors at 4000 particles
True
"""

from stackvi import (
    baselines,
    estimators,
    gradients,
    handlers,
    marginal,
    primitives,
    report,
    sharding,
)
from stackvi.advise import Advice, advise
from stackvi.axes import PARTICLES
from stackvi.estimators import Objective
from stackvi.fit import FitResult, fit
from stackvi.inference_data import to_arviz
from stackvi.primitives import (
    deterministic,
    factor,
    module,
    observe,
    param,
    plate,
    sample,
)

__version__ = "0.1.0"

__all__ = [
    "baselines",
    "estimators",
    "gradients",
    "handlers",
    "PARTICLES",
    "marginal",
    "primitives",
    "report",
    "sharding",
    "Objective",
    "fit",
    "FitResult",
    "advise",
    "Advice",
    "to_arviz",
    "sample",
    "observe",
    "param",
    "plate",
    "factor",
    "deterministic",
    "module",
]
