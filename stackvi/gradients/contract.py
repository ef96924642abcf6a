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
>>> float(_contract([(f.array, f.names)], {"enum:z": w}, "p:x"))   # 0.25*1 + 0.75*3
2.5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stackvi.handlers.strategies import Node
from stackvi.terms import Names, Term, Terms, align

__all__ = ["needs_contraction", "expected_total", "exact_surrogate", "pathwise_total",
           "mark_upstream", "downstream"]

sg = jax.lax.stop_gradient


def needs_contraction(nodes: list[Node]) -> bool:
    """True when some node is an enumerated support or an MVD site."""
    return any(n.kind in ("enumerate", "mvd") for n in nodes)


def _detached(nodes) -> set[str]:
    """Labels of the guide's own log q of score-function/MVD sites (see pathwise_total)."""
    return {"q:" + n.label for n in nodes if n.kind in ("reinforce", "mvd")}


def pathwise_total(value: Terms, nodes: list[Node]) -> jax.Array:
    """The value of a linear objective, for its pathwise gradient.

    A score-function (or MVD) site's own ``−log q(z)`` term, at its detached
    sample, has a zero-mean gradient (``E[∇ log q(z)] = 0``, for the site's
    parameters and anything upstream of them), so it is left out of the
    pathwise part, as NumPyro's ``TraceGraph_ELBO`` does: same mean, lower
    variance. Its value still counts, and it stays in the learning signals.
    Only for ``Terms`` (linear) values: under a ``logsumexp`` the term's
    weight depends on the sample and the mean would change.
    """
    detach = _detached(nodes)
    return sum((jnp.sum(sg(t.array) if t.label in detach else t.array) for t in value.terms),
               start=jnp.zeros(()))


def mark_upstream(nodes: list[Node], start: int, guide_trace: dict, model_trace: dict) -> None:
    """Record, on the REINFORCE nodes ``nodes[start:]``, the term labels that cannot depend on them.

    Program order decides, as in NumPyro's ``TraceGraph_ELBO`` (which tracks
    provenance): ``q:w`` when the guide samples ``w`` before ``z``, ``p:w``
    when the model reaches ``w`` before ``z`` and no model latent up to and
    including ``w`` takes its value from after ``z`` in the guide (``w``'s
    parents are among them). Leaving those terms out of ``z``'s learning
    signal removes zero-mean noise (e.g. a global latent's log-density in
    every plate element's signal).
    """
    g = [n for n, s in guide_trace.items() if s["type"] == "sample"]
    m = [n for n, s in model_trace.items() if s["type"] == "sample"]
    for i in range(start, len(nodes)):
        node = nodes[i]
        if node.kind != "reinforce" or node.info is not None or node.label not in g:
            continue
        before_g = set(g[:g.index(node.label)])
        up = {"q:" + w for w in before_g}
        if node.label in m:
            # p(w | parents) reads the values of model sites before w: it is free of the
            # node only while every latent so far was sampled before the node in the guide
            # (a later guide sample may depend on it), so stop at the first that was not.
            for w in m[:m.index(node.label)]:
                if not (model_trace[w]["is_observed"] or w in before_g):
                    break
                up.add("p:" + w)
        nodes[i] = node._replace(info=frozenset(up))


def downstream(value: Terms, node: Node) -> Terms:
    """The terms of ``value`` that may depend on ``node``'s sample (see :func:`mark_upstream`)."""
    if not isinstance(node.info, frozenset):
        return value
    return Terms(tuple(t for t in value.terms if t.label not in node.info))


def _weights(nodes) -> dict[str, Term]:
    return {n.info: n.log_prob for n in nodes if n.kind == "enumerate"}


def _branch_axes(nodes) -> set[str]:
    return {n.info[0] for n in nodes if n.kind == "mvd"}


def _select(array, names: Names, branches: set[str], keep: str | None = None):
    """Branch 0 (the sampled value) along every MVD axis except ``keep``."""
    for i in reversed(range(len(names))):
        if names[i] in branches and names[i] != keep:
            array = jnp.take(array, 0, axis=i)
            names = names[:i] + names[i + 1:]
    return array, names


def _contract(factors, weights: dict[str, Term], label: str, keep: Names = ()):
    """``Σ Π factors · Π q(enumerated)`` over every axis not in ``keep`` (laid out by ``keep``)."""
    union: list[str] = []
    for _, names in factors:
        union += [n for n in names if n not in union]
    todo = [n for n in union if n in weights and n not in keep]
    closure: list[str] = []
    while todo:
        a = todo.pop()
        if a in closure:
            continue
        closure.append(a)
        todo += [n for n in weights[a].names if n in weights and n not in keep]
    full = list(union)
    for a in closure:
        for n in weights[a].names:
            if n in weights or n in keep:
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
        out = out * jnp.exp(align(weights[a].array, weights[a].names, full_t))
    return align(out, full_t, tuple(keep)) if keep else jnp.sum(out)


def _check_terms(value, nodes) -> Terms:
    if isinstance(value, Terms):
        return value
    sites = sorted({n.label for n in nodes if n.kind in ("enumerate", "mvd")})
    raise ValueError(
        f"sites {sites} are claimed by enumerate/mvd, which need an objective whose value is "
        "Terms (linear in the log-densities, e.g. estimators.elbo); this objective returns "
        f"{type(value).__name__}. Use reinforce for these sites with a nonlinear objective."
    )


def expected_total(value, nodes: list[Node]) -> jax.Array:
    """The objective's value: enumerated axes contracted, MVD axes at branch 0."""
    value = _check_terms(value, nodes)
    weights, branches = _weights(nodes), _branch_axes(nodes)
    total = jnp.zeros(())
    for t in value.terms:
        total = total + _contract([_select(t.array, t.names, branches)], weights, t.label)
    return total


def exact_surrogate(value, nodes: list[Node], state: dict | None = None):
    """``(value, surrogate, new_state)`` when some nodes are enumerated or MVD (see module)."""
    value = _check_terms(value, nodes)
    weights, branches = _weights(nodes), _branch_axes(nodes)
    terms = [(*_select(t.array, t.names, branches), t.label) for t in value.terms]
    total, out = jnp.zeros(()), jnp.zeros(())
    detach = _detached(nodes)
    for f, names, label in terms:
        total = total + _contract([(f, names)], weights, label)
        # see pathwise_total; the enumeration weights keep their gradient either way
        out = out + _contract([(sg(f) if label in detach else f, names)], weights, label)
    new_state: dict = {}
    for node in nodes:
        if node.kind == "reinforce":
            out = out + _reinforce(node, terms, weights, branches, state, new_state)
        elif node.kind == "mvd":
            out = out + _mvd(node, value, weights, branches)
    return total, out, new_state


def _reinforce(node, terms, weights, branches, state, new_state):
    lp, names = _select(node.log_prob.array, node.log_prob.names, branches)
    d = lp - sg(lp)
    up = node.info if isinstance(node.info, frozenset) else frozenset()
    terms = [t for t in terms if t[2] not in up]
    acc = jnp.zeros(())
    for f, fnames, label in terms:
        acc = acc + _contract([(d, names), (sg(f), fnames)], weights, label)
    if node.baseline is not None:
        if node.baseline.needs_terms and "particles" not in names:
            raise ValueError(f"site '{node.label}': {node.baseline!r} needs a particle axis.")
        signal = jnp.zeros(lp.shape)
        for f, fnames, label in terms:
            signal = signal + _contract([(sg(f), fnames)], weights, label, keep=names)
        st = (state or {}).get(node.label, node.baseline.init_state())
        flat = node._replace(log_prob=Term(node.log_prob.label, lp, names))
        b, new_state[node.label], fit = node.baseline.evaluate(sg(signal), flat, st)
        acc = acc + fit - _contract([(d, names), (sg(jnp.broadcast_to(b, lp.shape)), names)],
                                    weights, node.label)
    return acc


def _mvd(node, value: Terms, weights, branches):
    axis, coord, pieces, size = node.info
    acc = jnp.zeros(())
    for p, (plus, minus) in enumerate(pieces):
        theta, c = node.extra[2 * p], node.extra[2 * p + 1]
        own = [n for n in theta.names if n != coord and n not in weights]
        for t in value.terms:
            if axis not in t.names:
                continue  # does not depend on this site: f⁺ − f⁻ = 0
            f, names = _select(t.array, t.names, branches, keep=axis)
            missing = [n for n in own if n not in names]
            if missing:
                raise ValueError(
                    f"term '{t.label}' depends on mvd site '{node.label}' but not along its "
                    f"plate(s) {missing}: costs of element i must live in the same plate."
                )
            i = names.index(axis)
            diff = jnp.take(f, _branch_index(plus, size), axis=i)
            if minus is not None:
                diff = diff - jnp.take(f, _branch_index(minus, size), axis=i)
            fnames = names[:i] + (coord,) + names[i + 1:]
            acc = acc + _contract(
                [(theta.array - sg(theta.array), theta.names), (sg(c.array), c.names),
                 (sg(diff), fnames)], weights, t.label)
    return acc


def _branch_index(j: int, size: int):
    """Branch of extra sample ``j`` for each of the ``size`` coordinates (``-1``: the sample)."""
    import numpy as np

    if j == -1:
        return np.zeros(size, dtype=np.int32)
    return 1 + j * size + np.arange(size, dtype=np.int32)
