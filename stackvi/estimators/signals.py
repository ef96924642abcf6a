"""Per-element learning signals for score-function sites.

A program normally returns a scalar (every score-function node gets the whole
value as its learning signal) or :class:`~stackvi.terms.Terms` (each node gets
the terms aligned with its plate/particle axes). Some estimators need
something in between: VIMCO gives particle *k* the signal ``L̂ − L̂₋ₖ`` (the
estimate minus a leave-one-out estimate that does not depend on particle
*k*). A program says so by returning a :class:`LearningSignal`:

* ``value`` — the scalar estimate (what ``estimate`` returns, and what pathwise
  gradients flow through);
* ``signal`` — an array laid out along the named axes ``names`` (usually
  ``("particles",)``);
* every score-function node whose axes include all of ``names`` gets
  ``signal`` aligned to its axes (broadcast along its other axes); any other
  node gets ``value``, which is always a valid (if noisier) signal.

The estimator stays unbiased as long as the part of ``signal[k]`` that
depends on particle *k*'s own sample is exactly ``value`` (i.e. ``value −
signal[k]`` is a baseline that does not depend on that sample).

>>> import jax.numpy as jnp
>>> s = LearningSignal(jnp.array(1.0), jnp.array([0.2, -0.3]), ("particles",))
>>> s.for_node(("particles", "data"), (2, 3)).shape
(2, 3)
>>> float(s.for_node(("data",), (3,))[0])
1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from stackvi.axes import PARTICLES, resolve_name
from stackvi.terms import Names, align

__all__ = ["LearningSignal"]


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class LearningSignal:
    """A scalar objective value plus per-element learning signals (see the module docstring)."""

    value: jax.Array
    signal: jax.Array
    names: Names = (PARTICLES,)

    def tree_flatten(self):
        return (self.value, self.signal), self.names

    @classmethod
    def tree_unflatten(cls, names, children):
        return cls(children[0], children[1], names)

    def total(self) -> jax.Array:
        """The scalar estimate."""
        return jnp.asarray(self.value)

    def for_node(self, names: Names, shape: tuple[int, ...]) -> jax.Array:
        """The learning signal of a node with axes ``names`` and log-prob shape ``shape``."""
        own = tuple(resolve_name(n, names) for n in self.names)
        if all(n in names for n in own):
            return jnp.broadcast_to(align(self.signal, own, names), shape)
        return jnp.broadcast_to(self.total(), shape)
