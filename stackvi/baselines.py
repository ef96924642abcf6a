"""Baselines (control variates) for score-function (REINFORCE) sites.

The score-function gradient of a site ``g`` is ``E[(L_g - b_g) ∇ log q(g)]``
where ``L_g`` is the learning signal (the costs that depend on ``g``). Any
``b_g`` that does not depend on the sample of ``g`` keeps the estimator
unbiased and, when close to ``E[L_g]``, lowers its variance.

A baseline is an object with

* ``init_state()`` -> a pytree (``()`` for stateless baselines), and
* ``__call__(signal, names, state)`` -> ``(b, new_state)``, where ``signal``
  is ``L_g`` laid out along the node's named axes ``names``.

Which one to use:

* :class:`MovingAverage` — any objective, any number of particles; its state
  is carried across optimization steps by :func:`stackvi.fit` (or by you,
  through ``Objective.value_and_grad_with_state``).
* :class:`LeaveOneOut` — objectives linear in per-particle costs (``elbo``
  with ``num_particles >= 2``): each particle's baseline is the mean signal
  of the *other* particles, which are independent of it.
* :class:`Learned` — any objective: a parameter per site (or a small network,
  through ``fn``) trained jointly with the model and guide on the squared error
  ``(L_g − b_g)²`` (like Pyro's neural baselines). Best when ``E[L_g]`` changes
  with the data (amortized guides) or across plate elements.
* :class:`FromFunction` — any objective: ``b_g = fn(site)``, your own value
  (an analytic guess, a running estimate you keep yourself).

``Learned`` and ``FromFunction`` compute ``b_g`` when the site is *claimed*,
before it is sampled, so they cannot see the sample: unbiased by construction.
Attach them with a handler (``reinforce(guide, baseline=...)``,
``strategies(..., reinforce={"baseline": ...})`` or ``configure``) so that
``Objective.init`` sees their parameters.

>>> import jax.numpy as jnp
>>> from stackvi.axes import PARTICLES
>>> b, _ = LeaveOneOut()(jnp.array([1.0, 2.0, 3.0]), (PARTICLES,), ())
>>> b.tolist()
[2.5, 2.0, 1.5]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from stackvi.axes import PARTICLES, resolve_name
from stackvi.terms import Term, align

__all__ = ["Baseline", "MovingAverage", "LeaveOneOut", "FromFunction", "Learned", "resolve",
           "named"]


class Baseline:
    """Base class: no state, zero baseline."""

    # True when the baseline is only valid for objectives that return Terms
    # (per-particle signals); on a scalar objective it would see its own sample.
    needs_terms: bool = False

    def init_state(self) -> Any:
        return ()

    def __call__(self, signal: jax.Array, names: tuple[str, ...], state: Any):
        return jnp.zeros_like(signal), state

    def evaluate(self, signal: jax.Array, node: Any, state: Any):
        """``(b, new_state, fit_term)``: the estimator's entry point.

        ``fit_term`` is added to the surrogate (value 0); only trained
        baselines have a nonzero one.
        """
        b, state = self(signal, node.log_prob.names, state)
        return b, state, jnp.zeros(())


class _EMAState(NamedTuple):
    ema: jax.Array
    weight: jax.Array


class MovingAverage(Baseline):
    """An exponential moving average of the node's mean learning signal over steps.

    The average is bias-corrected (divided by the accumulated weight), and is
    zero before the first update, so a fresh state gives plain REINFORCE.
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverage(decay={decay}): decay must be in [0, 1).")
        self.decay = decay

    def init_state(self) -> _EMAState:
        return _EMAState(jnp.zeros(()), jnp.zeros(()))

    def __call__(self, signal, names, state: _EMAState):
        b = jnp.where(state.weight > 0, state.ema / jnp.maximum(state.weight, 1e-30), 0.0)
        mean = jnp.mean(jax.lax.stop_gradient(signal))
        new = _EMAState(
            self.decay * state.ema + (1 - self.decay) * mean,
            self.decay * state.weight + (1 - self.decay),
        )
        return jnp.broadcast_to(b, signal.shape), new

    def __repr__(self):
        return f"MovingAverage(decay={self.decay})"


class LeaveOneOut(Baseline):
    """Each particle's baseline is the mean learning signal of the other particles."""

    needs_terms = True

    def __init__(self, axis: str = PARTICLES):
        self.axis = axis

    def __call__(self, signal, names, state):
        axis = resolve_name(self.axis, names)
        if axis not in names:
            raise ValueError(
                f"LeaveOneOut baseline needs the particle axis '{self.axis}' in the "
                f"site's axes {names}: use it with an objective over several particles "
                "(e.g. estimators.elbo(..., num_particles=K), K >= 2)."
            )
        i = names.index(axis)
        k = signal.shape[i]
        if k < 2:
            return jnp.zeros_like(signal), state
        total = jnp.sum(signal, axis=i, keepdims=True)
        return (total - signal) / (k - 1), state

    def __repr__(self):
        return f"LeaveOneOut(axis='{self.axis}')"


class FromFunction(Baseline):
    """``b = fn(site)``: a value you supply, computed when the site is claimed (before sampling).

    ``fn`` gets the site's message (``site["fn"]`` is its distribution) and
    returns an array that broadcasts to the site's batch shape.

    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from stackvi import estimators, handlers
    >>> def model():
    ...     numpyro.sample("b", dist.Bernoulli(0.5))
    >>> def guide():
    ...     numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))
    >>> g = handlers.reinforce(guide, sites=["b"], baseline=FromFunction(lambda site: -0.7))
    >>> obj = estimators.elbo(model, g)
    >>> _, grads = obj.value_and_grad(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    >>> sorted(grads)
    ['p']
    """

    def __init__(self, fn):
        if not callable(fn):
            raise ValueError(f"FromFunction needs a callable fn(site) -> baseline, got {fn!r}")
        self.fn = fn

    def register(self, msg: dict) -> jax.Array:
        """Called at claim time, inside the trace: compute (and register params for) ``b``."""
        return jnp.asarray(self.fn(msg))

    def _value(self, signal, node):
        for t in node.extra:
            if t.label == "baseline":
                return jnp.broadcast_to(align(t.array, t.names, node.log_prob.names), signal.shape)
        raise ValueError(
            f"site '{node.name}': baseline {self!r} has no value. Attach it with a handler "
            "(reinforce(guide, baseline=...), strategies or configure) rather than an infer dict."
        )

    def evaluate(self, signal, node, state):
        return self._value(signal, node), state, jnp.zeros(())

    def __repr__(self):
        return f"{type(self).__name__}({getattr(self.fn, '__name__', 'fn')})"


class Learned(FromFunction):
    """A baseline trained jointly on ``(L − b)²``: a param per site, or ``fn(site)`` using params.

    Without ``fn`` it is one scalar param named ``name`` (default
    ``"baseline:<site>"``), initialised at ``init``. With ``fn``, ``fn(site)``
    may create params itself (``numpyro.param``, ``numpyro.module``) and
    return ``b`` (e.g. a network of the data). The surrogate gains
    ``−Σ(sg(L) − b)²`` minus its own value: zero in value, and its gradient
    trains ``b``'s params by least squares while the guide's gradient uses
    ``L − sg(b)``.

    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from stackvi import estimators, handlers
    >>> def model():
    ...     numpyro.sample("b", dist.Bernoulli(0.5))
    >>> def guide():
    ...     numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))
    >>> obj = estimators.elbo(model, handlers.reinforce(guide, baseline=Learned()))
    >>> params = obj.init(jax.random.PRNGKey(0))
    >>> sorted(params)
    ['baseline:b', 'p']
    """

    trained = True  # its params must exist before the first step (see module docstring)

    def __init__(self, fn=None, init: float = 0.0, name: str | None = None):
        self.fn, self.init, self.name = fn, init, name

    def register(self, msg):
        import numpyro  # local: baselines stays importable without the PPL machinery

        if self.fn is not None:
            return jnp.asarray(self.fn(msg))
        # a strongly typed init: a weak-typed one would change type after the first
        # optimizer update and make a jitted step recompile
        init = jnp.array(self.init, dtype=jnp.result_type(float))
        return numpyro.param(self.name or f"baseline:{msg['name']}", init)

    def evaluate(self, signal, node, state):
        b = self._value(signal, node)
        sq = jnp.sum((jax.lax.stop_gradient(signal) - b) ** 2)
        return b, state, -(sq - jax.lax.stop_gradient(sq))

    def __repr__(self):
        return f"Learned(name={self.name!r})" if self.fn is None else "Learned(fn)"


def baseline_term(msg: dict, value) -> Term:
    """``value`` laid out like the site's log-density: plate axes named, others averaged."""
    from stackvi import terms as _terms

    batch = tuple(msg["fn"].batch_shape)
    value = jnp.broadcast_to(jnp.asarray(value), jnp.broadcast_shapes(jnp.shape(value), batch))
    frames = _terms.dim_names(msg)
    nd = value.ndim
    names = tuple(frames[i - nd] for i in range(nd) if (i - nd) in frames)
    drop = tuple(i for i in range(nd) if (i - nd) not in frames)
    return Term("baseline", jnp.mean(value, axis=drop) if drop else value, names)


_NAMED = {"ema": MovingAverage, "moving_average": MovingAverage, "loo": LeaveOneOut,
          "leave_one_out": LeaveOneOut}


def named() -> list[str]:
    """The names :func:`resolve` accepts (``'ema'``, ``'loo'``, ...)."""
    return sorted(_NAMED)


def resolve(spec: Baseline | str | None) -> Baseline | None:
    """``None``, a :class:`Baseline`, or one of ``'ema'``/``'moving_average'``/``'loo'``."""
    if spec is None or isinstance(spec, Baseline):
        return spec
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]()
    raise ValueError(
        f"unknown baseline {spec!r}: use one of {sorted(_NAMED)} or a stackvi.baselines.Baseline"
    )
