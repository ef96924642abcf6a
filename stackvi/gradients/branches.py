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

Blocks: where the coordinates of a site's event are not independent (a
Dirichlet's simplex vector), a branch for coordinate ``i`` must move the whole
vector. With ``block = B`` the event's coordinates are grouped into blocks of
``B`` consecutive ones (the trailing event dim), extra sample ``j`` brings one
value per coordinate of a block, ``ys`` of shape ``(J, B, *batch, *event)``,
and the branch for coordinate ``i`` of block ``m`` is the sample with block
``m`` replaced by block ``m`` of ``ys[j, i]``. Branch ``1 + j·D + m·B + i``
is still the one for extra sample ``j`` and flat coordinate ``m·B + i``:

>>> x = jnp.array([0.5, 0.5])
>>> ys = jnp.array([[[0.75, 0.25], [0.125, 0.875]]])  # J = 1: a full vector per coordinate
>>> branched_value(x, ys, batch=(), event=(2,), block=2).tolist()
[[0.5, 0.5], [0.75, 0.25], [0.125, 0.875]]
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


def branched_value(x, ys, batch: tuple, event: tuple, block: int = 1):
    """``(1 + J·D, *batch, *event)``: the sample, then each of ``J`` extra samples by coordinate.

    ``ys``: ``(J, *batch, *event)`` for ``block = 1``, else ``(J, block, *batch, *event)``
    (see the module docstring).
    """
    size = math.prod(event)
    nb = size // block
    if block == 1:
        ys = ys[:, None]
    xf = x.reshape(batch + (nb, block))
    yf = ys.reshape(ys.shape[:2] + batch + (nb, block))
    # branched[j, i, m, *batch, m', :]: block m' of ys[j, i] where m' == m, else of x
    eye = jnp.eye(nb, dtype=bool).reshape((nb,) + (1,) * len(batch) + (nb, 1))
    branched = jnp.where(eye[None, None], yf[:, :, None], xf[None, None, None])
    branched = jnp.swapaxes(branched, 1, 2).reshape((-1,) + batch + (size,))  # (j, m, i)
    value = jnp.concatenate([xf.reshape(batch + (size,))[None], branched])
    return value.reshape((value.shape[0],) + batch + event)


def lay_out(msg: dict, x, ys, dim: int, axis: Axis, block: int = 1) -> tuple[Axis, int]:
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
    if block < 1 or math.prod(event) % block or (block > 1 and event[-1] % block):
        raise ValueError(f"lay_out: site '{msg['name']}': block {block} does not divide its "
                         f"trailing event dim (event shape {event})")
    value = branched_value(x, ys.astype(x.dtype), batch, event, block)
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
