"""Exact contraction over enumerated supports, and MVD branches, in the surrogate.

When a guide has ``enumerate`` or ``mvd`` sites (:mod:`stackvi.handlers.enumerate`,
:mod:`stackvi.handlers.mvd`), the program's :class:`~stackvi.terms.Terms`
carry extra named axes:

* ``enum:<site>`` — one entry per support value ``k`` of an enumerated site.
  The objective is the exact expectation: every term is multiplied by the
  product of the weights ``q(z = k | parents)`` of the enumerated sites it
  depends on (and of their enumerated ancestors, found by closure over the
  weights' own axes) and summed. The weights keep their gradient.
* ``mvd:<site>`` — branch 0 is the sampled value, the others the weak-derivative
  branches. The value uses branch 0; each MVD node adds
  ``Σ (θ − sg θ) · sg(c · (f⁺ − f⁻))`` with ``f±`` its costs on its branches.

Every product is formed over the *union* of the factors' named axes (shared
plate/particle axes elementwise, others broadcast) before summing, so a
REINFORCE node's learning signal is the exact conditional expectation over
enumerated sites, and Rao-Blackwellization by plates is kept. A term that
depends on an element of an enumerated (or branched) site but lacks that
site's plate breaks parallel enumeration: that is an error naming both.

>>> import jax.numpy as jnp
>>> from stackvi.terms import Term
>>> w = Term("z", jnp.log(jnp.array([0.25, 0.75])), ("enum:z",))
>>> f = Term("p:x", jnp.array([1.0, 3.0]), ("enum:z",))
>>> float(contract([(f.array, f.names)], {"enum:z": w}, "p:x"))   # 0.25*1 + 0.75*3
2.5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stackvi.axes import Axis
from stackvi.gradients.records import SiteRecord
from stackvi.terms import Names, Term, Terms, align

__all__ = ["needs_contraction", "expected_total", "contract", "select", "branch_costs",
           "upstream_weights", "branch_difference"]

sg = jax.lax.stop_gradient


def needs_contraction(records: list[SiteRecord]) -> bool:
    """True when some record lays its site out along an axis (enumerated or branched)."""
    return any(r.axis is not None for r in records)


def weights(records, branches: set | None = None) -> dict:
    """``axis -> log q(z = k | parents)`` of every enumerated site.

    With ``branches``: at the sample (branch 0) of every branched site, which is
    what the value and the score terms use; the branch rules take them raw.
    """
    out = {r.axis: r.log_prob for r in records if r.axis is not None and r.kind == "enumerate"}
    if branches:
        out = {a: Term(w.label, *select(w.array, w.names, branches)) for a, w in out.items()}
    return out


def branch_axes(records) -> set:
    """Axes along which a site's sample and its branches are laid out (branch 0: the sample)."""
    return {r.axis for r in records if r.axis is not None and r.kind != "enumerate"}


def select(array, names: Names, branches: set, keep=None):
    """Branch 0 (the sampled value) along every branch axis except ``keep``."""
    for i in reversed(range(len(names))):
        if names[i] in branches and names[i] != keep:
            array = jnp.take(array, 0, axis=i)
            names = names[:i] + names[i + 1:]
    return array, names


def contract(factors, w: dict, label: str, keep: Names = ()):
    """``Σ Π factors · Π q(enumerated)`` over every axis not in ``keep`` (laid out by ``keep``)."""
    union: list = []
    for _, names in factors:
        union += [n for n in names if n not in union]
    todo = [n for n in union if n in w and n not in keep]
    closure: list = []
    while todo:
        a = todo.pop()
        if a in closure:
            continue
        closure.append(a)
        todo += [n for n in w[a].names if n in w and n not in keep]
    full = list(union)
    for a in closure:
        for n in w[a].names:
            if n in w or n in keep:
                full += [n] if n not in full else []
            elif n not in union:
                raise ValueError(
                    f"term '{label}' depends on the enumerated/branched site of axis '{a}' but "
                    f"not along its plate '{n}': a cost that uses element i of a plated site "
                    "must live in the same plate (or use reinforce for that site)."
                )
    full_t = tuple(full)
    out = None
    for array, names in factors:
        x = align(array, names, full_t)
        out = x if out is None else out * x
    for a in closure:
        out = out * jnp.exp(align(w[a].array, w[a].names, full_t))
    return align(out, full_t, tuple(keep)) if keep else jnp.sum(out)


def check_terms(value, records) -> Terms:
    if isinstance(value, Terms):
        return value
    sites = sorted({r.name for r in records if r.axis is not None})
    raise ValueError(
        f"sites {sites} are claimed by enumerate/mvd (or another strategy that lays out values "
        "along an axis of its own), which needs an objective whose value is Terms (linear in the "
        "log-densities, e.g. estimators.elbo); this objective returns a scalar "
        "(a nonlinear function of the particles). Use reinforce for these sites with a "
        "nonlinear objective (iwae, renyi, vimco)."
    )


def expected_total(value, records) -> jax.Array:
    """The objective's value: enumerated axes contracted, branch axes at branch 0."""
    value = check_terms(value, records)
    branches = branch_axes(records)
    w = weights(records, branches)
    total = jnp.zeros(())
    for t in value.terms:
        total = total + contract([select(t.array, t.names, branches)], w, t.label)
    return total


def branch_costs(value: Terms, record: SiteRecord, weights: dict, branches: set):
    """The costs of ``value`` that depend on ``record``'s branches, one per term.

    Yields ``(array, names, label)``: other branched sites at their sample
    (branch 0); enumerated sites *downstream* of the record (their weights vary
    along its branch axis) summed out with those weights, branch by branch, so
    that ``f⁺ − f⁻`` compares expectations under each branch's own downstream
    distribution. Terms with no dependence on the record are skipped.
    """
    axis = record.axis
    down = {a: select(w.array, w.names, branches, keep=axis) for a, w in weights.items()
            if axis in w.names}
    for t in value.terms:
        f, names = select(t.array, t.names, branches, keep=axis)
        closure = [n for n in names if n in down]
        todo = list(closure)
        while todo:
            for n in down[todo.pop()][1]:
                if n in down and n not in closure:
                    closure.append(n)
                    todo.append(n)
        if closure:
            keep = [n for n in names if n not in closure]
            for a in closure:
                keep += [n for n in down[a][1] if n not in closure and n not in keep
                         and isinstance(n, Axis)]
            sub = {a: Term(str(a), *down[a]) for a in closure}
            f = contract([(f, names)], sub, t.label, keep=tuple(keep))
            names = tuple(keep)
        if axis in names:
            yield f, names, t.label


def upstream_weights(weights: dict, record: SiteRecord, branches: set) -> dict:
    """Weights of the enumerated sites the record's branches do not change (branch 0 elsewhere)."""
    return {a: Term(str(a), *select(w.array, w.names, branches))
            for a, w in weights.items() if record.axis not in w.names}


def branch_difference(costs, record: SiteRecord, plus: int, minus: int | None, size: int,
                      coord, own):
    """Per cost of :func:`branch_costs`: its value on branch ``plus`` minus branch ``minus``.

    Yields ``(difference, names, label)`` with the branch axis replaced by ``coord``
    (one entry per branched coordinate).
    """
    axis = record.axis
    for f, names, label in costs:
        missing = [n for n in own if n not in names]
        if missing:
            raise ValueError(
                f"term '{label}' depends on site '{record.name}' but not along its "
                f"plate(s) {missing}: costs of element i must live in the same plate."
            )
        i = names.index(axis)
        diff = jnp.take(f, branch_index(plus, size), axis=i)
        if minus is not None:
            diff = diff - jnp.take(f, branch_index(minus, size), axis=i)
        yield diff, names[:i] + (coord,) + names[i + 1:], label


def branch_index(j: int, size: int):
    """Branch of extra sample ``j`` for each of the ``size`` coordinates (``-1``: the sample)."""
    if j == -1:
        return np.zeros(size, dtype=np.int32)
    return 1 + j * size + np.arange(size, dtype=np.int32)
