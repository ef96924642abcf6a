"""Continuations: a site's costs at other values, by re-running the objective's program.

The program of an :class:`~stackvi.estimators.core.Objective` is deterministic given
``(params, rng_key)``. Run again with the same key and one site's value replaced by
``y``, it replays everything upstream of the site identically and re-samples
everything downstream with the same noise (coupled): its value is the cost of the
rest of the program at ``y`` (genjax.vi's ADEV evaluates MVD continuations this
way). So a measure-valued derivative needs no branch axis in the main pass:

* the main pass draws the site plainly (detached, like a score-function sample)
  and records its weak-derivative pieces ``(θ, c, q⁺, q⁻)`` and branch values;
* after the pass, :func:`attach` re-runs the whole program once per such site,
  ``vmap``-ped over its branch values, forward only (``stop_gradient`` params): what
  does not depend on the branch value is not batched (and XLA merges it with the
  main pass), so a site costs its downstream on its branches, and several sites
  cost one re-run each — linear in the sites, never a product of branch axes;
* the site's term is ``Σ (θ − sg θ) · sg(c · (f⁺ − f⁻))`` (:func:`gradient`).

**Which cost belongs to which element.** The branch value replaces the site in
every plate element (and, for a linear objective, every particle) at once. For
:class:`~stackvi.terms.Terms` the cost of element *i* is the terms aligned to the
site's plates; for a nonlinear value each particle is substituted on its own (the
branch cost is the objective's own value with the site changed in that particle
only: IWAE, VIMCO), and element *i*'s cost is read off the
:class:`~stackvi.estimators.signals.LearningSignal` along the site's plates (a
scalar value with a plated site of more than one element is refused). That is
exact only if nothing outside the plate reads the site: the sample is tagged
(:mod:`stackvi.gradients.dataflow`) with its plates as required axes, and a term,
a record's log-density or a particle's log-weight that reads it without them is
refused, naming the term and the site.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators, handlers
>>> def model():
...     numpyro.sample("b", dist.Bernoulli(0.5))
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))
>>> obj = estimators.iwae(model, handlers.mvd(guide), num_particles=2)
>>> _, grads = jax.jit(obj.value_and_grad)({"p": jax.numpy.asarray(0.3)}, jax.random.PRNGKey(1))
>>> sorted(grads)
['p']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from jax import random

from stackvi.axes import PARTICLES, Axis, is_internal
from stackvi.gradients.branches import branched_value, check_plated, site_term
from stackvi.gradients.contract import branch_axes, branch_index, contract, select, weights
from stackvi.gradients.dataflow import tag
from stackvi.gradients.records import SiteRecord
from stackvi.gradients.strategy import dist_name
from stackvi.terms import Term, Terms, site_log_prob

__all__ = ["Continuation", "Relaxation", "Target", "session", "active", "particle", "prepare",
           "record", "substitute", "tagged", "attach", "gradient", "is_continuation", "BRANCH"]

sg = jax.lax.stop_gradient

#: the leading axis of a record's branch costs (entry 0: the sample)
BRANCH = Axis("mvd:branch")


class Target(NamedTuple):
    """The site a re-run substitutes: its ordinal in the run, the branch (an index into
    :func:`~stackvi.gradients.branches.branched_value`, traced), and the particle
    (traced; ``None``: every particle)."""

    ordinal: int
    branch: Any
    particle: Any = None
    value: Any = None  # a Term: the value itself (differentiable), for :func:`substitute`


class Continuation(NamedTuple):
    """``SiteRecord.static`` of a site whose branches are evaluated by re-runs."""

    ordinal: int
    pieces: tuple  # ((plus, minus), ...) per parameter piece (see handlers.mvd)
    size: int  # event coordinates D
    branches: int  # J·D: branch values after the sample
    coord: Axis
    plates: frozenset  # plates of more than one element (substituted at once)


class Relaxation(NamedTuple):
    """``SiteRecord.static`` of a site whose costs at values of its own, computed in the main
    pass and differentiable (its last ``count`` ``extra`` Terms, site-shaped as by
    :func:`~stackvi.gradients.branches.site_term`), are evaluated by re-runs (``rebar``):
    :func:`attach` appends one Term of costs per value, laid out like its log-density, with
    the gradient through the value (the params stopped)."""

    ordinal: int
    count: int
    plates: frozenset


class _Session:
    def __init__(self, target: Target | None, nonlinear: bool):
        self.target, self.nonlinear, self.count = target, nonlinear, 0


_SESSIONS: list[_Session] = []
_PARTICLES: list[tuple] = []  # (axis, index) of the particle being traced


@contextmanager
def session(target: Target | None = None, nonlinear: bool = False):
    """One run of an objective's program (``Objective`` opens it): claimed sites branch by
    continuation; ``target`` makes it a re-run; ``nonlinear``: the program's value is not
    ``Terms`` (``enumerate`` then differentiates by continuation too)."""
    _SESSIONS.append(_Session(target, nonlinear))
    try:
        yield _SESSIONS[-1]
    finally:
        _SESSIONS.pop()


def active() -> _Session | None:
    return _SESSIONS[-1] if _SESSIONS else None


@contextmanager
def particle(axis, index):
    """Inside ``particles``: the index (traced under ``vmap``) of the particle being run."""
    _PARTICLES.append((axis, index))
    try:
        yield
    finally:
        _PARTICLES.pop()


def is_continuation(record: SiteRecord) -> bool:
    return isinstance(record.static, (Continuation, Relaxation))


def _plates(msg: dict) -> frozenset:
    return frozenset(f.name for f in msg.get("cond_indep_stack", ()) if f.size > 1)


def prepare(msg: dict, decompose: Callable, who: str, block: int = 1) -> bool:
    """Draw the site and its branch values; in a re-run, substitute the target's branch.

    ``decompose(x, key) -> (ys (J, *batch, *event), [(θ, c, plus, minus), ...])``;
    ``block``: as for :func:`~stackvi.gradients.branches.lay_out`.
    ``False`` outside an objective's run (the caller lays the site out instead).
    """
    s = active()
    if s is None:
        return False
    from stackvi.handlers.enumerate import _current

    scope = _current()
    if scope is not None and scope.disabled:
        return True  # the blocked pre-run that finds plate nesting: a plain sample
    check_plated(msg, who)
    ordinal, s.count = s.count, s.count + 1
    fn = msg["fn"]
    batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
    k1, k2 = random.split(numpyro.prng_key())
    x = sg(fn.sample(k1))
    ys, pieces = decompose(x, k2)
    size = math.prod(event)
    coord = Axis(f"mvd:{msg['name']}:coord")
    value = x
    t = s.target
    if t is not None and t.ordinal == ordinal:
        ys = sg(ys).astype(x.dtype)
        every = (branched_value(x, ys, batch, event) if block == 1
                 else branched_value(x, ys, batch, event, block))
        y = jnp.take(every, t.branch, axis=0)
        if t.particle is not None:
            here = [i for a, i in _PARTICLES if a == PARTICLES]
            if here:
                y = jnp.where(here[-1] == t.particle, y, x)
        value = y
    plates = _plates(msg)
    value = tag(value, f"continuation:{msg['name']}", msg["name"], dist_name(msg),
                f"claimed by {who}", requires=plates)
    extra = []
    for theta, c, _, _ in pieces:
        extra += [site_term(msg, theta, coord), site_term(msg, c, coord)]
    cont = Continuation(ordinal, tuple((p, m) for _, _, p, m in pieces), size,
                        ys.shape[0] * size, coord, plates)
    msg["value"] = value
    msg["infer"] = {**msg["infer"], "_stackvi_owns_value": True,
                    "_stackvi_continuation": (tuple(extra), cont)}
    return True


def substitute(msg: dict, who: str):
    """``(ordinal, value)`` for a site whose values a re-run substitutes (:class:`Relaxation`):
    its ordinal in the run (``None`` outside an objective's run) and, in a re-run targeting
    it, the value (shaped like the site's; the current particle's), else ``None``."""
    s = active()
    if s is None:
        return None, None
    from stackvi.handlers.enumerate import _current

    scope = _current()
    if scope is not None and scope.disabled:
        return None, None
    check_plated(msg, who)
    ordinal, s.count = s.count, s.count + 1
    t = s.target
    if t is None or t.ordinal != ordinal or t.value is None:
        return ordinal, None
    array, names = t.value.array, t.value.names
    for axis, index in _PARTICLES:  # outermost first, as with_axis stacked them
        if names and names[0] == axis:
            array, names = jnp.take(array, index, axis=0), names[1:]
    fn = msg["fn"]
    return ordinal, array.reshape(tuple(fn.batch_shape) + tuple(fn.event_shape))


def tagged(msg: dict, value, who: str):
    """``value`` tagged for the data flow as a continuation site's (its plates required)."""
    return tag(value, f"continuation:{msg['name']}", msg["name"], dist_name(msg),
               f"claimed by {who}", requires=_plates(msg))


def record(msg: dict, kind: str) -> SiteRecord | None:
    """The record of a site :func:`prepare` drew (``None`` if it did not)."""
    got = msg["infer"].get("_stackvi_continuation")
    if got is None:
        return None
    extra, cont = got
    return SiteRecord(msg["name"], site_log_prob({**msg, "scale": None}), kind,
                      extra=extra, static=cont)


# --------------------------------------------------------------------------- the re-runs

def _costs(value, records, record: SiteRecord, stop: bool = True):
    """The program's value as costs laid out like ``record``'s log-density (no gradient
    unless ``stop`` is false: Terms only)."""
    lp = record.log_prob
    if isinstance(value, Terms):
        branches = branch_axes(records)
        w = weights(records, branches)
        out = jnp.zeros(lp.array.shape)
        for t in value.terms:
            if t.source is not None and t.source in record.upstream:
                continue  # cannot depend on the site: the same in every branch
            f, names = select(t.array, t.names, branches)
            f = contract([(f, names)], w, t.label, keep=lp.names) if w else _align(f, names, lp)
            out = out + jnp.broadcast_to(f, lp.array.shape)
        return sg(out) if stop else out
    from stackvi.estimators.signals import LearningSignal

    cont = record.static
    names = value.names if isinstance(value, LearningSignal) else ()
    lacking = sorted(p for p in cont.plates if p not in names)
    if lacking:
        what = ("a scalar" if not isinstance(value, LearningSignal)
                else f"a LearningSignal along {list(names)}")
        raise ValueError(
            f"site '{record.name}' (claimed by {record.kind}) lies in plate(s) {lacking} of "
            f"more than one element, but the objective's value is {what}: it does not say "
            "which element each cost belongs to, so the branches of one element cannot be "
            "told from the others'. Use a per-element bound (iwae/vimco/renyi with "
            "per_datapoint=True, the default) or reinforce for this site."
        )
    if isinstance(value, LearningSignal):
        return sg(value.for_node(lp.names, lp.array.shape))
    return sg(jnp.broadcast_to(jnp.asarray(value), lp.array.shape))


def _align(f, names, lp):
    from stackvi.terms import align

    return align(f, names, lp.names)


def attach(rerun: Callable, value, records: list, params) -> list:
    """``records`` with each continuation record's branch costs appended to its ``extra``.

    ``rerun(params, target, nonlinear) -> (value, records)`` runs the program again
    (same key). Costs: ``(1 + J·D, *log-density shape)``, entry 0 the sample's.
    """
    if not any(is_continuation(r) for r in records):
        return records
    nonlinear = not isinstance(value, Terms)
    params = sg(params)
    out = list(records)
    for i, r in enumerate(records):
        if isinstance(r.static, Relaxation):
            out[i] = _relaxed(rerun, value, records, i, params)
            continue
        if not is_continuation(r):
            continue
        cont, lp = r.static, r.log_prob
        pidx = None
        if nonlinear:
            odd = [n for n in lp.names if is_internal(n) and n != PARTICLES]
            if odd:
                raise ValueError(
                    f"site '{r.name}' (claimed by {r.kind}) under a nonlinear objective has "
                    f"axes {odd} besides the particles': its continuations substitute one "
                    "particle at a time and cannot tell those apart. Use reinforce for it."
                )
            if PARTICLES in lp.names:
                pidx = lp.names.index(PARTICLES)

        def cost(b, k, r=r, cont=cont, pidx=pidx):
            v, recs = rerun(params, Target(cont.ordinal, b, k), nonlinear)
            c = _costs(v, recs, r)
            return c if k is None else jnp.take(c, k, axis=pidx)

        bs = jnp.arange(1, 1 + cont.branches)
        if pidx is None:
            f = jax.vmap(lambda b, cost=cost: cost(b, None))(bs)
        else:
            ks = jnp.arange(lp.array.shape[pidx])
            f = jax.vmap(lambda b, cost=cost, ks=ks: jax.vmap(lambda k: cost(b, k))(ks))(bs)
            f = jnp.moveaxis(f, 1, 1 + pidx)
        f = jnp.concatenate([_costs(value, records, r)[None], f])
        out[i] = r._replace(extra=r.extra + (Term("costs", sg(f), (BRANCH, *lp.names)),))
    return out


def _relaxed(rerun: Callable, value, records: list, i: int, params) -> SiteRecord:
    """Record ``i`` (a :class:`Relaxation`) with its costs at each of its values appended."""
    r = records[i]
    rel, lp = r.static, r.log_prob
    if not isinstance(value, Terms):
        raise ValueError(
            f"site '{r.name}' (claimed by {r.kind}): its control variate re-evaluates the "
            "costs of each element at a relaxed value, which needs a linear objective (Terms: "
            "elbo); this objective's value is nonlinear in the particles (iwae, vimco, renyi). "
            "Use relax, disarm or reinforce for it."
        )
    # A later score-function site whose distribution reads this one is drawn again at the
    # relaxed value with the same noise: a step function of it, whose jump the pathwise
    # gradient of the control variate misses (biased). Refused (data flow: upstream).
    later = sorted({q.name for q in records[i + 1:]
                    if q.name != r.name and (q.trace, q.name) not in r.upstream})
    if later:
        raise ValueError(
            f"site '{r.name}' (claimed by {r.kind}): guide site(s) {later} drawn after it by a "
            "score-function or branching strategy may depend on it; at its relaxed value they "
            "would be drawn again with the same noise, a step function of the value, and the "
            "control variate's pathwise gradient would be biased. Claim the later site(s) "
            f"with a pathwise strategy, or use relax, disarm or reinforce for '{r.name}'."
        )
    costs = []
    for t in r.extra[len(r.extra) - rel.count:]:
        v, recs = rerun(params, Target(rel.ordinal, None, None, t), False)
        costs.append(Term(f"f({t.label})", _costs(v, recs, r, stop=False), lp.names))
    return r._replace(extra=r.extra + tuple(costs))


def gradient(record: SiteRecord, ctx) -> jax.Array:
    """``Σ (θ − sg θ) · sg(c · (f⁺ − f⁻))`` per piece, per element and coordinate."""
    cont, lp = record.static, record.log_prob
    if len(record.extra) != 2 * len(cont.pieces) + 1:
        raise ValueError(
            f"site '{record.name}' (claimed by {record.kind}) has no branch costs: its "
            "continuations are evaluated by Objective.value_and_grad (the program is re-run); "
            "surrogate() on hand-collected records cannot do that."
        )
    f = record.extra[-1].array
    w = ctx.weights if ctx.exact else {}
    branches = ctx.branches if ctx.exact else set()
    names = lp.names + (cont.coord,)
    acc = jnp.zeros(())
    for p, (plus, minus) in enumerate(cont.pieces):
        theta = select(record.extra[2 * p].array, record.extra[2 * p].names, branches)
        c = select(record.extra[2 * p + 1].array, record.extra[2 * p + 1].names, branches)
        diff = jnp.take(f, branch_index(plus, cont.size), axis=0)
        if minus is not None:
            diff = diff - jnp.take(f, branch_index(minus, cont.size), axis=0)
        diff = jnp.moveaxis(diff, 0, -1)
        acc = acc + contract([(theta[0] - sg(theta[0]), theta[1]), (sg(c[0]), c[1]),
                              (sg(diff), names)], w, record.name)
    return acc
