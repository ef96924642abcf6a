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

>>> import jax.numpy as jnp
>>> b, _ = LeaveOneOut()(jnp.array([1.0, 2.0, 3.0]), ("particles",), ())
>>> b.tolist()
[2.5, 2.0, 1.5]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Baseline", "MovingAverage", "LeaveOneOut", "resolve"]


class Baseline:
    """Base class: no state, zero baseline."""

    # True when the baseline is only valid for objectives that return Terms
    # (per-particle signals); on a scalar objective it would see its own sample.
    needs_terms: bool = False

    def init_state(self) -> Any:
        return ()

    def __call__(self, signal: jax.Array, names: tuple[str, ...], state: Any):
        return jnp.zeros_like(signal), state


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

    def __init__(self, axis: str = "particles"):
        self.axis = axis

    def __call__(self, signal, names, state):
        if self.axis not in names:
            raise ValueError(
                f"LeaveOneOut baseline needs the particle axis '{self.axis}' in the "
                f"site's axes {names}: use it with an objective over several particles "
                "(e.g. estimators.elbo(..., num_particles=K), K >= 2)."
            )
        i = names.index(self.axis)
        k = signal.shape[i]
        if k < 2:
            return jnp.zeros_like(signal), state
        total = jnp.sum(signal, axis=i, keepdims=True)
        return (total - signal) / (k - 1), state

    def __repr__(self):
        return f"LeaveOneOut(axis='{self.axis}')"


_NAMED = {"ema": MovingAverage, "moving_average": MovingAverage, "loo": LeaveOneOut,
          "leave_one_out": LeaveOneOut}


def resolve(spec: Baseline | str | None) -> Baseline | None:
    """``None``, a :class:`Baseline`, or one of ``'ema'``/``'moving_average'``/``'loo'``."""
    if spec is None or isinstance(spec, Baseline):
        return spec
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec]()
    raise ValueError(
        f"unknown baseline {spec!r}: use one of {sorted(_NAMED)} or a stackvi.baselines.Baseline"
    )
