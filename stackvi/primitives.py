"""Effects that models and guides perform.

stackvi sends exactly the messages NumPyro sends, so a model written with
``numpyro.sample`` / ``numpyro.plate`` / ``numpyro.param`` and one written with
the names below are the same program to every handler — NumPyro's and ours.
``sample``, ``param``, ``plate``, ``factor`` and ``deterministic`` *are*
NumPyro's primitives; ``observe`` is the one spelling we add, because reading
``observe("x", d, value)`` says what the site is for.

>>> import jax, numpyro.distributions as dist
>>> from stackvi import primitives as p
>>> from numpyro.handlers import seed, trace
>>> def model(x):
...     z = p.sample("z", dist.Normal(0.0, 1.0))
...     with p.plate("data", x.shape[0]):
...         p.observe("x", dist.Normal(z, 1.0), x)
>>> tr = trace(seed(model, 0)).get_trace(jax.numpy.ones(3))
>>> [(name, site["is_observed"]) for name, site in tr.items() if site["type"] == "sample"]
[('z', False), ('x', True)]
"""

from __future__ import annotations

from typing import Any

import numpyro
from numpyro.distributions import Distribution
from numpyro.primitives import (
    deterministic,
    factor,
    module,
    param,
    plate,
    prng_key,
    sample,
    subsample,
)

__all__ = [
    "sample",
    "observe",
    "param",
    "plate",
    "factor",
    "deterministic",
    "module",
    "prng_key",
    "subsample",
]


def observe(name: str, fn: Distribution, value: Any, **kwargs: Any) -> Any:
    """Condition the program on ``value`` at site ``name``: ``sample(name, fn, obs=value)``."""
    if value is None:
        raise ValueError(
            f"observe('{name}', {type(fn).__name__}, value=None): an observed site needs a "
            "value; use sample() for a latent site."
        )
    return numpyro.sample(name, fn, obs=value, **kwargs)
