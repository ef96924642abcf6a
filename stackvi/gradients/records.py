"""Typed records of the latent sites a program draws, collected in one context.

Every latent sample that is not differentiated pathwise leaves a
:class:`SiteRecord`: which strategy's rule applies (``kind``), the site's
log-density with named axes, its baseline, and the facts the estimator needs
to stay unbiased and to Rao-Blackwellize — the terms that cannot depend on
the sample (``upstream``: program order), the axis its support or branches
are laid out along, the strategy's own extra arrays. The estimator
(:func:`stackvi.gradients.surrogate.surrogate`) derives everything from these
records; no program has to pass anything along.

:func:`recording` opens the context (``Objective`` opens one per run; a
nested one, e.g. inside :func:`stackvi.estimators.particles`' ``vmap``,
collects its own records, which the caller re-registers). It is a Python
stack that lives while one program is traced, like NumPyro's handler stack.
A record made inside a transformation that the context cannot see — a user's
own ``jax.vmap`` or ``lax.scan`` around a program — would leak a tracer: the
estimator turns that into a clear error (use ``particles`` for vectorized
samples).

>>> import jax.numpy as jnp
>>> from stackvi.terms import Term
>>> with recording() as rec:
...     current_recorder().add(SiteRecord("b", Term("b", jnp.zeros(3), ("data",)), "reinforce"))
>>> [r.name for r in rec.records], rec.records[0].with_axis(PARTICLES).log_prob.names
(['b'], (Axis('particles'), 'data'))
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax

from stackvi.axes import PARTICLES, Axis
from stackvi.terms import Term

__all__ = ["SiteRecord", "Recorder", "recording", "current_recorder", "PARTICLES"]


class SiteRecord(NamedTuple):
    """One non-pathwise latent site drawn by a program (see the module docstring).

    ``log_prob`` is ``log q(z | parents)`` with named axes (for ``enumerate``:
    the exact weights of every support value, along ``axis``). ``upstream``
    holds the keys (``Term.source``) of terms that cannot depend on this
    sample. ``extra`` are traced arrays the strategy's rule needs, ``static``
    its hashable static data. ``trace`` identifies the trace that drew it.
    ``variance_params`` names parameters (a strategy's control variate, e.g.
    ``relax``'s) that the objective trains to minimise the gradient estimator's
    variance instead of maximising the objective (``Objective.value_and_grad``).
    ``pooled`` names plates whose elements a later guide site may mix
    (:func:`~stackvi.gradients.structure.pool_shared_plates`): the objective sums
    ``log_prob`` over them (:func:`~stackvi.gradients.structure.apply_pooling`)
    unless the program's data flow shows nothing outside them reads the sample.
    """

    name: str
    log_prob: Term
    kind: str
    baseline: Any = None
    upstream: frozenset = frozenset()
    axis: Axis | None = None
    extra: tuple = ()
    static: Any = None
    trace: int | None = None
    variance_params: frozenset = frozenset()
    pooled: frozenset = frozenset()

    def with_axis(self, axis) -> SiteRecord:
        """The same record after a leading axis ``axis`` was stacked on (by ``vmap``)."""

        def add(t: Term) -> Term:
            return Term(t.label, t.array, (axis, *t.names), t.source)

        return self._replace(log_prob=add(self.log_prob), extra=tuple(add(t) for t in self.extra))


def _flatten(r: SiteRecord):
    return (r.log_prob, r.extra), (r.name, r.kind, r.baseline, r.upstream, r.axis, r.static,
                                   r.trace, r.variance_params, r.pooled)


def _unflatten(aux, children):
    name, kind, baseline, upstream, axis, static, trace, variance_params, pooled = aux
    return SiteRecord(name, children[0], kind, baseline, upstream, axis, tuple(children[1]),
                      static, trace, variance_params, pooled)


jax.tree_util.register_pytree_node(SiteRecord, _flatten, _unflatten)


class Recorder:
    """The records of one run of a program; ``tokens`` numbers its traces uniquely."""

    def __init__(self, tokens=None):
        self.records: list[SiteRecord] = []
        self.tokens = tokens if tokens is not None else itertools.count()
        self.sums_out = False  # the model summed out discrete sites (gradients.marginalize)

    def add(self, record: SiteRecord) -> None:
        self.records.append(record)

    def extend(self, records) -> None:
        self.records.extend(records)

    def token(self) -> int:
        return next(self.tokens)

    def __len__(self):
        return len(self.records)


_RECORDERS: list[Recorder] = []


def current_recorder() -> Recorder | None:
    """The innermost open :class:`Recorder` (``None`` outside any objective)."""
    return _RECORDERS[-1] if _RECORDERS else None


@contextmanager
def recording():
    """Collect the records of the sites drawn in this block (one trace only).

    Nested blocks share the outer one's trace numbering, so a record's
    ``upstream`` keys never match a term of another trace.
    """
    parent = current_recorder()
    rec = Recorder(parent.tokens if parent is not None else None)
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.pop()
        if parent is not None:
            parent.sums_out = parent.sums_out or rec.sums_out
