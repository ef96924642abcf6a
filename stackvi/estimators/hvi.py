"""Bounds for hierarchical guides: HVI, IWHVI and DIWHVI, as ELBO/IWAE over a ``marginal``.

A hierarchical guide ``q(z) = ∫ q(z, u) du`` has no tractable density. Over
:func:`stackvi.marginal.marginal` (the auxiliary ``u`` integrated out with a
reverse model ``r(u | z)`` and ``m`` particles, the sampled ``u`` being one of
them) the guide's log-density is an estimate whose expectation is *above*
``log q(z)``, so each of these stays a lower bound on ``log p(x)``:

* ``hvi`` — the ELBO with ``m = 1``: ``E[log p(x, z) − log q(z, u) + log r(u | z)]``
  (Ranganath, Tran & Blei, 2016);
* ``iwhvi`` — the ELBO with ``m`` particles (Sobolev & Vetrov, 2019);
* ``diwhvi`` — IWAE with ``n`` particles over the ``m``-particle marginal.

For one guide and reverse model, ``HVI ≤ IWHVI(m) ≤ DIWHVI(n, m) ≤ log p(x)``
in expectation. ``m`` counts the sampled auxiliary too (``m = 1`` is HVI).
Gradients reach the guide's and the reverse model's params through whatever
strategies their sites carry.

>>> import jax, numpyro, numpyro.distributions as dist
>>> def model():
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)
>>> def guide():
...     u = numpyro.sample("u", dist.Normal(0.0, 1.0))
...     numpyro.sample("z", dist.Normal(u, 1.0))
>>> def reverse(values):
...     numpyro.sample("u", dist.Normal(numpyro.param("a", 0.0) * values["z"], 1.0))
>>> obj = iwhvi(model, guide, reverse, aux=["u"], num_aux=5)
>>> sorted(obj.init(jax.random.PRNGKey(0)))
['a']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from stackvi.estimators.core import Objective
from stackvi.estimators.elbo import elbo
from stackvi.estimators.iwae import check_num_particles, iwae
from stackvi.marginal import marginal

__all__ = ["hvi", "iwhvi", "diwhvi"]


def _renamed(obj: Objective, name: str, **info) -> Objective:
    return Objective(obj.program, obj.model, obj.guide, name=name, info={**obj.info, **info})


def hvi(model: Callable, guide: Callable, reverse: Callable, aux: Iterable[str],
        num_particles: int = 1) -> Objective:
    """The HVI bound: the ELBO over the guide marginalized with one auxiliary sample."""
    return iwhvi(model, guide, reverse, aux, num_aux=1, num_particles=num_particles)


def iwhvi(model: Callable, guide: Callable, reverse: Callable, aux: Iterable[str],
          num_aux: int = 5, num_particles: int = 1) -> Objective:
    """The IWHVI bound: the ELBO over the guide marginalized with ``num_aux`` = m particles."""
    check_num_particles("iwhvi", num_aux, "num_aux")
    q = marginal(guide, reverse, aux, num_particles=num_aux)
    name = "hvi" if num_aux == 1 else "iwhvi"
    return _renamed(elbo(model, q, num_particles), name, num_aux=num_aux)


def diwhvi(model: Callable, guide: Callable, reverse: Callable, aux: Iterable[str],
           num_particles: int = 5, num_aux: int = 5) -> Objective:
    """The DIWHVI bound: IWAE with ``num_particles`` = n over the ``num_aux`` = m marginal."""
    check_num_particles("diwhvi", num_aux, "num_aux")
    q = marginal(guide, reverse, aux, num_particles=num_aux)
    return _renamed(iwae(model, q, num_particles), "diwhvi", num_aux=num_aux)
