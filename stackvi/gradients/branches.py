"""Sites evaluated on several values at once: the sample and its branches, along one axis.

Strategies that need the costs of a site at other values than its sample
(measure-valued derivatives, DisARM's antithetic draw) lay the values out along
a fresh axis left of every plate: entry 0 is the sample, then for each extra
sample ``j`` and each coordinate ``i`` of the event, the sample with
coordinate ``i`` replaced by extra sample ``j``'s. Every cost downstream is
then evaluated on every branch in one vectorized pass, and
:func:`~stackvi.gradients.contract.branch_difference` reads differences off it.

>>> import jax.numpy as jnp
>>> branched_value(jnp.array([0.0, 0.0]), jnp.array([[1.0, 1.0]]), batch=(), event=(2,)).tolist()
[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from stackvi import terms as _terms
from stackvi.axes import Axis
from stackvi.gradients.strategy import dist_name
from stackvi.terms import Term

__all__ = ["allocate_dim", "branched_value", "lay_out", "site_term", "plated_term",
           "check_plated"]


def allocate_dim(msg: dict, prefix: str):
    """A fresh dim left of all plates and its :class:`Axis` (``None`` outside an objective)."""
    from stackvi.handlers.enumerate import allocate_dim as _allocate

    return _allocate(msg, prefix)


def check_plated(msg: dict, who: str) -> None:
    """Every batch dim of size > 1 must be a plate: elements are branched independently."""
    batch = tuple(msg["fn"].batch_shape)
    frames = _terms.dim_names(msg)
    for i, size in enumerate(batch):
        if size != 1 and (i - len(batch)) not in frames:
            raise ValueError(
                f"{who}: site '{msg['name']}' ({dist_name(msg)}) has batch dim {i - len(batch)}"
                f" of size {size} that no plate declares; put it in a plate or use "
                ".to_event() so its elements can be branched correctly."
            )


def branched_value(x, ys, batch: tuple, event: tuple):
    """``(1 + J·D, *batch, *event)``: the sample, then each of ``J`` extra samples by coordinate."""
    size = math.prod(event)
    xf, yf = x.reshape(batch + (size,)), ys.reshape((ys.shape[0],) + batch + (size,))
    eye = jnp.eye(size, dtype=bool).reshape((size,) + (1,) * len(batch) + (size,))
    branched = jnp.where(eye[None], yf[:, None], xf[None, None])
    value = jnp.concatenate([xf[None], branched.reshape((-1,) + batch + (size,))])
    return value.reshape((value.shape[0],) + batch + event)


def lay_out(msg: dict, x, ys, dim: int, axis: Axis) -> tuple[Axis, int]:
    """Set the site's value to :func:`branched_value` along ``dim``; ``(coord axis, D)``."""
    from stackvi.handlers.enumerate import _owned

    fn = msg["fn"]
    batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
    if ys.ndim < 1 or ys.shape[0] < 1:
        # A branch axis of size 1 (the sample alone) is dropped when terms are named, and
        # every branch difference would silently read zero: refuse it.
        raise ValueError(
            f"lay_out: site '{msg['name']}' ({dist_name(msg)}) got no extra samples (ys of "
            f"shape {tuple(jnp.shape(ys))}); pass at least one, stacked along axis 0."
        )
    value = branched_value(x, ys.astype(x.dtype), batch, event)
    value = value.reshape((value.shape[0],) + (1,) * (-dim - 1 - len(batch)) + batch + event)
    _owned(msg, value, dim, axis)
    return Axis(f"{axis}:coord"), math.prod(event)


def site_term(msg: dict, array, coord: Axis, label: str | None = None) -> Term:
    """An array of the site's value shape as a Term: named plate dims, then the coordinates."""
    fn = msg["fn"]
    batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
    array = jnp.broadcast_to(array, batch + event).reshape(batch + (-1,))
    return plated_term(msg, array, coord, label or str(coord))


def plated_term(msg: dict, array, coord: Axis, label: str) -> Term:
    """``array`` of shape (site's batch shape) + (E,) as a Term: its plate dims named, the
    batch dims no plate declares (size 1) squeezed, then ``coord`` of size E."""
    n = len(msg["fn"].batch_shape)
    frames = _terms.dim_names(msg)
    names = tuple(frames[i - n] for i in range(n) if (i - n) in frames)
    squeeze = tuple(i for i in range(n) if (i - n) not in frames)
    return Term(label, jnp.squeeze(array, squeeze) if squeeze else array, names + (coord,))
