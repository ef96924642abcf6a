"""stackvi: programmable variational inference for JAX, on unchanged NumPyro models.

>>> import stackvi as sv
>>> sorted(name for name in ("elbo",) if hasattr(sv.estimators, name))
['elbo']
"""

from stackvi import baselines, estimators, handlers, primitives
from stackvi.estimators import Objective
from stackvi.fit import FitResult, fit
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
    "handlers",
    "primitives",
    "Objective",
    "fit",
    "FitResult",
    "sample",
    "observe",
    "param",
    "plate",
    "factor",
    "deterministic",
    "module",
]
