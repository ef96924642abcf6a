"""``density``: the log joint of one run of a program, term by term.

>>> import jax.numpy as jnp, numpyro.distributions as dist
>>> from stackvi import primitives as p
>>> def model():
...     z = p.sample("z", dist.Normal(0.0, 1.0))
...     with p.plate("data", 3):
...         p.observe("x", dist.Normal(z, 1.0), jnp.zeros(3))
>>> from numpyro.handlers import substitute
>>> with density() as d:
...     substitute(model, {"z": 0.0})()
>>> round(float(d.log_joint), 4)   # 4 * log N(0; 0, 1)
-3.6758
>>> d.terms["x"].names, d.terms["x"].array.shape
(('data',), (3,))
"""

from __future__ import annotations

import jax
from numpyro.primitives import Messenger

from stackvi.terms import Term, Terms, site_log_prob

__all__ = ["density", "trace_terms"]


class density(Messenger):
    """Accumulate the log-density of every sample site (latent and observed).

    Respects plates (each term keeps one named axis per plate), NumPyro's
    ``mask`` and ``scale``. After the run, ``.terms`` holds the per-site
    :class:`~stackvi.terms.Terms` and ``.log_joint`` their total. Sites sampled
    by a guide are scored at their sampled value, so the same handler gives
    ``log p`` for a model and ``log q`` for a guide.
    """

    def __init__(self, fn=None):
        self._terms: list[Term] = []
        super().__init__(fn)

    def __enter__(self):
        self._terms = []
        return super().__enter__() or self

    def postprocess_message(self, msg):
        if msg["type"] == "sample":
            self._terms.append(site_log_prob(msg))

    @property
    def terms(self) -> Terms:
        return Terms(tuple(self._terms))

    @property
    def log_joint(self) -> jax.Array:
        return self.terms.total()


def trace_terms(trace: dict, prefix: str = "") -> Terms:
    """The log-density :class:`Terms` of an already recorded NumPyro trace.

    Auxiliary guide sites (``infer={"is_auxiliary": True}``) are included:
    they are part of the guide's density.
    """
    token = getattr(trace, "token", None)  # set on traces made by simulate/score_model
    return Terms(
        tuple(
            site_log_prob(s, label=prefix + s["name"],
                          source=None if token is None else (token, s["name"]))
            for s in trace.values()
            if s["type"] == "sample"
        )
    )
