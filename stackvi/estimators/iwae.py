"""The importance-weighted bound (IWAE / IWELBO) with K particles.

``log 1/K Σₖ p(x, zₖ) / q(zₖ)``, ``zₖ ~ q`` independently. It is a scalar
(``logsumexp`` is not linear in the particles), so every score-function site
gets the whole estimate as its learning signal; pathwise sites differentiate
through it. K = 1 is the ELBO; the bound is nondecreasing in K and tends to
``log p(x)``. For lower-variance score-function gradients use
:func:`~stackvi.estimators.vimco.vimco`; for better pathwise guide gradients
:func:`~stackvi.estimators.dreg.dreg`.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> def model():
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)
>>> def guide():                         # the exact posterior N(1/2, 1/√2)
...     numpyro.sample("z", dist.Normal(0.5, 0.5 ** 0.5))
>>> obj = iwae(model, guide, num_particles=5)
>>> round(float(obj.estimate({}, jax.random.PRNGKey(0))), 4)   # log p(x) = log N(1; 0, √2)
-1.5155

**Per data point by default.** When every log-density term of the model and
guide lies in some plates — the *data plates* (the plates common to all
sites, NumPyro's ``RenyiELBO`` rule) — the importance weights stay per element
of those plates: the bound is ``Σₙ log 1/K Σₖ wₖₙ`` (Burda et al.'s IWAE for a
dataset, equal to NumPyro's ``RenyiELBO(alpha=0)``), which is at least the
whole-batch bound ``log 1/K Σₖ Πₙ wₖₙ`` and needs only K samples per data
point to be tight. A subsampled data plate (scale N/B) has its weights
unscaled inside the ``logsumexp`` and the scale applied to the sum, as
NumPyro does. ``per_datapoint=False`` gives the whole-batch bound (all plates
summed before the ``logsumexp``); with no data plate (a global latent) the
two are the same. Score-function sites of element n get element n's bound as
their learning signal (the others' bounds do not depend on them).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.primitives import Messenger

from stackvi.axes import is_internal
from stackvi.estimators.core import PARTICLES, Objective, log_weight, particles
from stackvi.estimators.signals import LearningSignal
from stackvi.terms import Terms

__all__ = ["iwae", "check_num_particles", "check_per_datapoint", "data_plates", "plate_sizes",
           "PerPoint", "per_point_log_weights", "per_point_terms"]


def check_num_particles(name: str, num: int, what: str = "num_particles") -> None:
    """A clear error for K < 1 or not an integer (NumPy integers are fine, ``True`` is not)."""
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
        raise ValueError(
            f"{name}: {what} must be a positive int (the number of importance samples K), "
            f"got {num!r}."
        )


class plate_sizes(Messenger):
    """Record ``name -> (size, subsample size)`` of every plate the program enters."""

    def __init__(self, fn=None):
        self.sizes: dict = {}
        super().__init__(fn)

    def postprocess_message(self, msg):
        if msg["type"] == "plate":
            size = msg["args"][0]
            sub = jnp.shape(msg["value"])[0] if msg["value"] is not None else size
            self.sizes[msg["name"]] = (size, sub)

    def scale(self, plates) -> float:
        """The subsampling scale of ``plates``: ``Π N/B`` over the subsampled ones."""
        out = 1.0
        for p in plates:
            size, sub = self.sizes.get(p, (None, None))
            if size is not None and size > sub:
                out = out * size / sub
        return out


def data_plates(terms: Terms) -> tuple[str, ...]:
    """The plates every term lies in (NumPyro ``RenyiELBO``'s independent plates).

    >>> import jax.numpy as jnp
    >>> from stackvi.axes import PARTICLES
    >>> from stackvi.terms import Term
    >>> data_plates(Terms((Term("p:z", jnp.ones((2, 3)), (PARTICLES, "data")),
    ...                    Term("q:z", jnp.ones((2, 3)), (PARTICLES, "data")))))
    ('data',)
    """
    common = None
    for t in terms.terms:
        plates = [n for n in t.names if n != PARTICLES and not is_internal(n)]
        common = plates if common is None else [n for n in common if n in plates]
    return tuple(common or ())


class PerPoint:
    """Per-particle log-weights laid out along the data plates, unscaled.

    ``lw`` has shape ``(K, *plate sizes)`` (``names`` = ``(PARTICLES, *plates)``);
    ``scale`` is the subsampling scale of the data plates (``N/B`` per plate), to
    be applied to the sum over elements of a per-element bound.
    """

    def __init__(self, lw, names, scale):
        self.lw, self.names, self.scale = lw, names, scale

    def bound(self, per_element: Callable[[jax.Array], jax.Array]) -> LearningSignal:
        """``scale · Σₙ f(lw[:, n])`` with element n's term as its learning signal."""
        each = self.scale * per_element(self.lw)  # shape: the plates
        value = jnp.sum(each)
        signal = jnp.broadcast_to(each, self.lw.shape)
        return LearningSignal(value, signal, self.names)


def per_point_terms(terms_fn: Callable, num: int, per_datapoint: bool = True) -> Callable:
    """``(*args) -> (terms, names, scale)``: ``terms_fn`` (returning :class:`Terms`) run
    ``num`` times as particles, the per-element layout ``names = (PARTICLES, *data
    plates)`` and the data plates' subsampling scale: ``terms.per(names) / scale`` are
    the unscaled per-element sums. With ``per_datapoint=False`` (or no data plate)
    the layout is ``(PARTICLES,)``: the whole batch is one element, and the scale is 1.
    """

    def run(*args, **kwargs):
        sizes = plate_sizes()
        with sizes:
            terms = particles(terms_fn, num)(*args, **kwargs)
        plates = data_plates(terms) if per_datapoint else ()
        return terms, (PARTICLES, *plates), sizes.scale(plates)

    return run


def per_point_log_weights(model: Callable, guide: Callable, num: int,
                          per_datapoint: bool = True) -> Callable:
    """``(*args) -> PerPoint``: K log-weights per element of the data plates.

    With ``per_datapoint=False`` (or no data plate) the layout is ``(K,)``: the
    whole batch is one element, and its scale is 1.
    """

    def run(*args, **kwargs):
        terms, names, scale = per_point_terms(log_weight(model, guide), num,
                                              per_datapoint)(*args, **kwargs)
        return PerPoint(terms.per(names) / scale, names, scale)

    return run


def _logmeanexp(lw):
    return jax.nn.logsumexp(lw, axis=0) - jnp.log(lw.shape[0])


def iwae(model: Callable, guide: Callable, num_particles: int = 1,
         per_datapoint: bool = True) -> Objective:
    """The IWAE bound with ``num_particles`` = K importance samples.

    ``per_datapoint=True`` (default): one bound per element of the data plates,
    summed (NumPyro's ``RenyiELBO(alpha=0)``); ``False``: one bound for the batch.
    """
    check_num_particles("iwae", num_particles)
    check_per_datapoint("iwae", per_datapoint)

    def program(*args, **kwargs):
        pp = per_point_log_weights(model, guide, num_particles, per_datapoint)(*args, **kwargs)
        return pp.bound(_logmeanexp)

    return Objective(program, model, guide, name="iwae",
                     info={"num_particles": num_particles, "per_datapoint": per_datapoint})


def check_per_datapoint(name: str, per_datapoint) -> None:
    """A clear error unless ``per_datapoint`` is a bool (the objectives' shared flag)."""
    if not isinstance(per_datapoint, bool):
        raise TypeError(f"{name}: per_datapoint must be True (a bound per element of the data "
                        f"plates) or False (one bound for the batch), got {per_datapoint!r}")
