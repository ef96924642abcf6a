"""What each term reads: data flow on the program's jaxpr, for two jobs.

**Laid-out axes are kept.** An enumerated or branched site (``enumerate``,
``mvd``, ``disarm``, …; or a site the model sums out) takes all its values at
once, laid out along an axis of its own, and every cost computed from it must
keep that axis: entry *k* of the cost is the cost at entry *k* of the site. A
cost that reduces the axis away — ``jnp.sum(a)`` or ``a.sum()`` over a plated
site, where ``a.sum(-1)`` was meant — mixes the support values (or the
branches) into one number, and its named axes no longer show that it read the
site at all: the estimate would be silently wrong (Pyro and NumPyro trust the
user here). Shapes cannot tell; data flow can: a ``ValueError`` names the
term, the site, its distribution and its strategy.

**Score-function signals leave out what a sample cannot reach.** Program
order (:mod:`stackvi.gradients.structure`) already keeps terms computed
*before* a sample out of its learning signal; data flow also drops the later
terms that do not read it (an independent site's observation), as NumPyro's
``TraceGraph_ELBO`` does by provenance tracking: less variance, same mean.

:func:`analyse` traces the program once more (``jax.make_jaxpr``: tracing
only, nothing runs and the compiled step is unchanged) with every laid-out
value and every score-function sample passed through an identity tagged with
its axis (:func:`tag`, ``jax.ad_checkpoint.checkpoint_name``), and reads off
the jaxpr which tags each term's array is reachable from (:func:`reads`,
through ``pjit``, ``scan``, ``cond``, ``while`` and custom-derivative calls;
any other primitive's outputs read all its inputs, conservatively).

>>> import jax.numpy as jnp
>>> def program(a):
...     a = tag(a, "enum:a")
...     return [a + 1.0, jnp.sum(a), jnp.ones(2)]
>>> with tagging():
...     found = reads(program, jnp.zeros(3))
>>> [sorted(r) for r in found]
[['enum:a'], ['enum:a'], []]
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
from jax.ad_checkpoint import checkpoint_name
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

__all__ = ["tag", "tagging", "is_tagging", "probe", "model_axis", "score_axis", "reads",
           "analyse", "Flow"]

_PREFIX = "stackvi-layout:"
_MODEL = "sum:"  # tags of the sites the model sums out
_SCORE = "score:"  # tags of score-function samples (not laid out)
EMPTY: frozenset = frozenset()


class _Tags:
    """What one analysis trace collects: the tagged sites, and arrays to check."""

    def __init__(self):
        self.sites: dict[str, tuple[str, str, str]] = {}  # tag -> (site, dist, how)
        # tag -> the axes an array reading it must carry (default: the tag's own axis)
        self.requires: dict[str, frozenset] = {}
        self.probes: list[tuple] = []  # (array, axes it has, label, checks model tags?)


_TAGGING: list[_Tags] = []  # a stack while one analysis trace runs, like NumPyro's handlers


@contextmanager
def tagging():
    """Tag laid-out values and samples in this block (the analysis trace of :func:`analyse`)."""
    tags = _Tags()
    _TAGGING.append(tags)
    try:
        yield tags
    finally:
        _TAGGING.pop()


def is_tagging() -> bool:
    return bool(_TAGGING)


def tag(value, axis: str, site: str = "?", dist: str = "?", how: str = "laid out",
        requires: frozenset | None = None):
    """``value`` itself; inside :func:`tagging`, marked in the jaxpr as read from ``axis``.

    ``requires``: the axes an array that reads it must carry instead of ``axis`` itself
    (a site whose branches are evaluated by re-runs: its plates).
    """
    if not _TAGGING:
        return value
    _TAGGING[-1].sites[str(axis)] = (site, dist, how)
    if requires is not None:
        _TAGGING[-1].requires[str(axis)] = frozenset(map(str, requires))
    return checkpoint_name(value, _PREFIX + str(axis))


def model_axis(site: str) -> str:
    """The tag of a site the model sums out (``gradients.marginalize``)."""
    return f"{_MODEL}{site}"


def probe(array, axes, label: str, model_too: bool = True) -> None:
    """Inside :func:`tagging`: check that ``array`` (a model factor before the sum over the
    model's enumerated sites; with ``model_too=False`` a particle's log-weight, checked
    against the guide's sites only) reads no tagged site whose axis is not in ``axes``."""
    if _TAGGING:
        _TAGGING[-1].probes.append((array, frozenset(map(str, axes)), label, model_too))


def reads(fn: Callable, *args) -> list[frozenset]:
    """For each array ``fn(*args)`` returns (a flat list), the tags it is reachable from."""
    closed = jax.make_jaxpr(fn)(*args)
    return _walk(closed.jaxpr, [EMPTY] * len(closed.jaxpr.invars))


def _union(sets) -> frozenset:
    out = EMPTY
    for s in sets:
        out = out | s
    return out


def _walk(jaxpr: Jaxpr, ins: list) -> list:
    env = dict(zip(jaxpr.invars, ins, strict=True))

    def read(atom):
        return EMPTY if isinstance(atom, Literal) else env.get(atom, EMPTY)

    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(a) for a in eqn.invars])
        for var, deps in zip(eqn.outvars, outs, strict=True):
            env[var] = deps
    return [read(a) for a in jaxpr.outvars]


def _open(j) -> Jaxpr:
    return j.jaxpr if isinstance(j, ClosedJaxpr) else j


def _equation(eqn, ins: list) -> list:
    name, params, n_out = eqn.primitive.name, eqn.params, len(eqn.outvars)
    if name == "name" and str(params.get("name", "")).startswith(_PREFIX):
        return [ins[0] | {params["name"][len(_PREFIX):]}]
    if name == "scan":
        return _scan(eqn, ins)
    if name == "while":
        return _while(eqn, ins)
    if name == "cond":
        outs = [EMPTY] * n_out
        for branch in params["branches"]:
            outs = [a | b for a, b in zip(outs, _walk(_open(branch), ins[1:]), strict=True)]
        return [o | ins[0] for o in outs]
    subs = [_open(j) for j in params.values() if isinstance(j, (Jaxpr, ClosedJaxpr))]
    for sub in subs:  # pjit, closed_call, remat, custom_jvp/vjp calls: same arity as the eqn
        if len(sub.invars) == len(ins) and len(sub.outvars) == n_out:
            return _walk(sub, ins)
    # any other primitive: every output reads every input (conservative for unknown calls)
    return [_union(ins)] * n_out


def _scan(eqn, ins: list) -> list:
    body = _open(eqn.params["jaxpr"])
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
    while True:  # what the carry reads grows with the steps: iterate to the fixed point
        outs = _walk(body, consts + carry + xs)
        grown = [c | o for c, o in zip(carry, outs[:n_carry], strict=True)]
        if grown == carry:
            return carry + outs[n_carry:]
        carry = grown


def _while(eqn, ins: list) -> list:
    cond, body = _open(eqn.params["cond_jaxpr"]), _open(eqn.params["body_jaxpr"])
    nc, nb = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    cond_consts, body_consts, carry = ins[:nc], ins[nc:nc + nb], ins[nc + nb:]
    while True:
        pred = _union(_walk(cond, cond_consts + carry))  # the trip count reads the predicate
        grown = [c | o | pred for c, o in zip(carry, _walk(body, body_consts + carry),
                                              strict=True)]
        if grown == carry:
            return carry
        carry = grown


#: what the analysis trace may fail on and the real run not: a laid-out value that the real
#: run keeps concrete (enumerated supports) is a tracer here (e.g. indexing a NumPy array)
_UNTRACEABLE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def score_axis(trace, site: str) -> str:
    """The tag of a score-function sample (its trace's token and its name)."""
    return f"{_SCORE}{trace}:{site}"


class Flow(NamedTuple):
    """What :func:`analyse` found for each record ``j``: ``unreached[j]`` and ``pooled[j]``."""

    num_terms: int
    unreached: tuple
    pooled: tuple = ()
    baselines: tuple | None = None  # (name, baseline) per record; None: not traced


class _Term(NamedTuple):
    names: tuple
    source: Any


class _Record(NamedTuple):
    name: str
    trace: Any
    axis: Any
    kind: str
    pooled: frozenset
    baseline: Any


def analyse(run: Callable, params, rng_key) -> Flow:
    """Check the laid-out sites' axes; return, per record, the terms its sample cannot reach.

    ``run(params, rng_key) -> (value, records)`` is the program. It is traced
    once more under :func:`tagging`. Its terms and records are checked against
    the axes of the guide's laid-out sites, and the model's factors registered
    with :func:`probe` also against the model's summed-out sites: an array that
    reads a site but lacks its axis is a ``ValueError``.

    ``unreached`` has one entry per record: for a sample that is not laid out
    (``reinforce`` and the other score-function rules), the indices of the
    value's terms that do not read it — directly or through the weights of an
    enumerated site whose distribution reads it, which the surrogate contracts
    outside the program — and that therefore cannot depend on it (NumPyro's
    ``TraceGraph_ELBO`` finds the same by provenance tracking); ``None`` where
    that is not known; it is empty when the program could not be traced.
    ``pooled[j]``: of the record's ``pooled`` plates, those some term lacking
    that plate reads the sample through (the others need no pooling: nothing
    outside the plate mixes its elements); ``None`` where not known.
    """

    def arrays(p, k):
        with tagging() as tags:
            v, recs = run(p, k)
        terms = list(getattr(v, "terms", ()))
        checked = [(t.array, t.names, t.label) for t in terms]
        checked += [(r.log_prob.array, r.log_prob.names, f"log q({r.name})") for r in recs]
        probes = [(a, frozenset(map(str, n)), label, False) for a, n, label in checked]
        probes += tags.probes
        # metadata only: a tracer kept past this trace would leak (jax.checking_leaks)
        found.append((dict(tags.sites), dict(tags.requires), [pr[1:] for pr in probes],
                      [_Term(t.names, t.source) for t in terms],
                      [_Record(r.name, r.trace, r.axis, r.kind, r.pooled, r.baseline)
                       for r in recs]))
        tags.probes.clear()
        return [pr[0] for pr in probes]

    found: list = []
    try:
        closed = jax.make_jaxpr(arrays)(params, rng_key)
    except _UNTRACEABLE:
        return Flow(-1, ())  # the support is needed concrete: no jaxpr to read (design.md)
    sites, requires, probes, terms, recs = found[-1]
    baselines = tuple((r.name, r.baseline) for r in recs)
    if not sites:  # nothing laid out, no score-function sample: nothing to read off
        return Flow(len(terms), (None,) * len(recs), (None,) * len(recs), baselines)
    reached = _walk(closed.jaxpr, [EMPTY] * len(closed.jaxpr.invars))
    for (axes, label, model_too), got in zip(probes, reached, strict=True):
        for axis in sorted(got - axes):
            if axis.startswith(_SCORE) or (axis.startswith(_MODEL) and not model_too):
                continue  # samples are not laid out; terms after the model's sum lose its axes
            site, dist, how = sites[axis]
            if axis in requires:
                missing = sorted(requires[axis] - axes)
                if missing:
                    raise ValueError(
                        f"term '{label}' reads site '{site}' ({dist}, {how}) but lacks its "
                        f"plate(s) {missing}: the site's branches are evaluated in every "
                        "element at once and each element's cost is read off its own "
                        "element, so a cost outside the plate that combines the elements "
                        "(e.g. `jnp.sum(a)` or `a.sum()` over the plate) would bias the "
                        "estimate silently. Keep such costs inside the plate (reduce over "
                        f"event dims only) or use reinforce for '{site}'."
                    )
                continue
            raise ValueError(
                f"term '{label}' reads site '{site}' ({dist}, {how}) but has lost its axis "
                f"'{axis}', along which the site's values are laid out: the term reduces over "
                "them (e.g. `jnp.sum(a)` or `a.sum()` where `a.sum(-1)` was meant), which "
                "would mix every value into one cost and bias the estimate silently. Reduce "
                "over event dims only (negative axes); a cost that combines the elements of a "
                "plated site cannot be laid out in parallel at all: use reinforce for "
                f"'{site}' (sample it in the guide if the model sums it out)."
            )
    term_reads = reached[:len(terms)]
    weights = {str(r.axis): reached[len(terms) + j] for j, r in enumerate(recs)
               if r.axis is not None and r.kind == "enumerate"}
    term_reads = [_through_weights(got, weights) for got in term_reads]
    unreached = tuple(_unreached(r, terms, term_reads, sites) for r in recs)
    pooled = tuple(None if u is None else _pooled(r, terms, term_reads)
                   for r, u in zip(recs, unreached, strict=True))
    return Flow(len(terms), unreached, pooled, baselines)


def _pooled(record, terms, term_reads) -> frozenset:
    tag_ = score_axis(record.trace, record.name)
    return frozenset(p for p in record.pooled
                     if any(tag_ in got and p not in t.names
                            for t, got in zip(terms, term_reads, strict=True)))


def _through_weights(got: frozenset, weights: dict) -> frozenset:
    """What a term reads once the surrogate weights it by the enumerated sites it reads."""
    while True:
        more = _union(weights[a] for a in got if a in weights) - got
        if not more:
            return got
        got = got | more


def _unreached(record, terms, term_reads, sites):
    tag_ = score_axis(record.trace, record.name)
    if record.axis is not None or tag_ not in sites:
        return None
    own = [i for i, t in enumerate(terms) if t.source == (record.trace, record.name)]
    if not own or not all(tag_ in term_reads[i] for i in own):
        return None  # the value the program read is not the tagged sample: assume nothing
    return frozenset(i for i, got in enumerate(term_reads) if tag_ not in got)
