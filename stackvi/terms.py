"""Log-density terms with named independence axes.

A variational objective is mostly a sum of per-site log-densities. To give
REINFORCE the smallest correct learning signal (Rao-Blackwellization) we must
remember *which* elements of each log-density are conditionally independent:
the axes that come from plates and from particles. A :class:`Term` is an array
whose every axis is named by the plate (or particle set) it indexes; a
:class:`Terms` is a list of them that stays structured under the linear
operations objectives use (``+``, ``-``, scaling, ``mean`` over particles).
Anything nonlinear (``total()`` then ``logsumexp``...) collapses to a plain
scalar, and the estimator then treats the value as depending on every sample.

>>> import jax.numpy as jnp
>>> t = Terms([Term("x", jnp.ones((2, 3)), ("particles", "data"))])
>>> float(t.mean("particles").total())
3.0
>>> align(jnp.arange(6.0).reshape(2, 3), ("particles", "data"), ("data",)).tolist()
[3.0, 5.0, 7.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from stackvi._compat import log_density
from stackvi.axes import is_internal, resolve_name

__all__ = ["Term", "Terms", "align", "dim_names", "site_log_prob"]

Names = tuple[str, ...]

# Named dims that are not plates (enumerated supports, MVD branches), keyed by
# negative dim; pushed for one trace by stackvi.handlers.enumerate.enum_scope.
_DIM_NAMES: list[dict[int, str]] = []


def align(array: jax.Array, names: Names, target: Names) -> jax.Array:
    """Sum ``array`` over axes not in ``target`` and lay it out along ``target``.

    Axes of ``target`` that ``array`` lacks get size 1 (they broadcast), so the
    result has ``len(target)`` dimensions.
    """
    keep = [n for n in names if n in target]
    drop = tuple(i for i, n in enumerate(names) if n not in target)
    if drop:
        array = jnp.sum(array, axis=drop)
    order = [keep.index(n) for n in target if n in keep]
    array = jnp.transpose(array, order) if order != list(range(len(order))) else array
    shape = []
    it = iter(array.shape)
    for n in target:
        shape.append(next(it) if n in keep else 1)
    return jnp.reshape(array, shape)


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class Term:
    """One log-density contribution: ``array`` has one named axis per plate/particle axis."""

    label: str
    array: jax.Array
    names: Names = ()
    # (trace token, site name) when the term is a site's log-density in a recorded
    # trace: how the estimator knows which terms cannot depend on a sample.
    source: tuple | None = None

    def tree_flatten(self):
        return (self.array,), (self.label, self.names, self.source)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], children[0], aux[1], aux[2])

    def scaled(self, c) -> Term:
        return Term(self.label, self.array * c, self.names, self.source)


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class Terms:
    """A structured sum of :class:`Term` objects (linear in its terms)."""

    terms: Sequence[Term] = field(default_factory=tuple)

    def tree_flatten(self):
        return (tuple(self.terms),), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(tuple(children[0]))

    def total(self) -> jax.Array:
        """The scalar value: every element of every term summed."""
        return sum((jnp.sum(t.array) for t in self.terms), start=jnp.zeros(()))

    def __add__(self, other: Terms) -> Terms:
        if not isinstance(other, Terms):
            return NotImplemented
        return Terms(tuple(self.terms) + tuple(other.terms))

    def __neg__(self) -> Terms:
        return Terms(tuple(t.scaled(-1.0) for t in self.terms))

    def __sub__(self, other: Terms) -> Terms:
        if not isinstance(other, Terms):
            return NotImplemented
        return self + (-other)

    def __mul__(self, c) -> Terms:
        return Terms(tuple(t.scaled(c) for t in self.terms))

    __rmul__ = __mul__

    def axis_names(self) -> list:
        """Every axis name used by some term."""
        out: list = []
        for t in self.terms:
            out += [n for n in t.names if n not in out]
        return out

    def mean(self, axis: str) -> Terms:
        """Average over the named axis (kept as an independence axis)."""
        axis = resolve_name(axis, self.axis_names())
        out = []
        for t in self.terms:
            if axis not in t.names:
                raise ValueError(f"term '{t.label}' has no axis named '{axis}' (axes: {t.names})")
            out.append(t.scaled(1.0 / t.array.shape[t.names.index(axis)]))
        return Terms(tuple(out))

    def per(self, names: Names) -> jax.Array:
        """Sum of all terms laid out along ``names`` (e.g. per-particle log-weights)."""
        available = self.axis_names()
        names = tuple(resolve_name(n, available) for n in names)
        return sum((align(t.array, t.names, names) for t in self.terms), start=jnp.zeros(()))

    def with_axis(self, name: str) -> Terms:
        """The same terms after a leading axis ``name`` was stacked on (by ``vmap``)."""
        return Terms(tuple(Term(t.label, t.array, (name, *t.names), t.source)
                           for t in self.terms))

    def __getitem__(self, label: str) -> Term:
        for t in self.terms:
            if t.label == label:
                return t
        raise KeyError(label)

    def labels(self) -> list[str]:
        return [t.label for t in self.terms]


def dim_names(site: dict) -> dict[int, str]:
    """The named dims of a site, by negative dim: its plates, and any enumerated/branch dims."""
    names = dict(_DIM_NAMES[-1]) if _DIM_NAMES else {}
    names.update({f.dim: f.name for f in site.get("cond_indep_stack", ())})
    return names


def site_log_prob(site: dict, apply_scale: bool = True, label: str | None = None,
                  source: tuple | None = None) -> Term:
    """The log-density of one traced sample site as a :class:`Term`.

    Plate axes are named by their plate, every other batch axis is summed out
    (those elements are not independent), NumPyro's ``mask`` zeroes elements
    and ``scale`` (subsampling, ``handlers.scale``) multiplies them.
    """
    log_prob = log_density(site["fn"], site["value"], site.get("intermediates"))
    mask = site.get("mask")
    if mask is not None and mask is not True:
        log_prob = jnp.where(mask, log_prob, 0.0)
    if apply_scale and site.get("scale") is not None:
        log_prob = log_prob * site["scale"]
    log_prob = jnp.asarray(log_prob)
    return _named(site["name"] if label is None else label, log_prob, dim_names(site), source)


def _named(label: str, log_prob: jax.Array, frames: dict, source=None) -> Term:
    ndim = log_prob.ndim
    names, drop = [], []
    for i in range(ndim):
        name = frames.get(i - ndim)
        # A plate axis of size 1 in a broadcast log-prob still indexes the plate: keep
        # it so alignment by name stays exact. A size-1 enumerated/branch axis only
        # means "does not depend on that site": drop it, so the term is not taken
        # for a function of the site.
        if name is None or (is_internal(name) and log_prob.shape[i] == 1):
            drop.append(i)
        else:
            names.append(name)
    if drop:
        log_prob = jnp.sum(log_prob, axis=tuple(drop))
    return Term(label, log_prob, tuple(names), source)
