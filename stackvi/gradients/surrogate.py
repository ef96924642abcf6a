"""One surrogate for every program: its value is the estimate, its gradient the estimator.

    surrogate = pathwise value + Σ_records  rule(record)

The pathwise value carries reparameterized gradients (and, contracted with
the exact weights, enumerated ones). Each record's strategy adds its term
through its class's ``gradient(record, ctx)`` (:mod:`stackvi.gradients.strategy`);
``ctx`` is :class:`Signals`, which derives from the records and the program's
value what the rules need:

* **learning signals** (:meth:`Signals.signal`): for a linear value
  (:class:`~stackvi.terms.Terms`) the terms that may depend on the record —
  aligned by plate/particle name (element *i* sees element *i*'s costs),
  minus the record's ``upstream`` terms — computed for all records of one
  layout at once (one product with a 0/1 matrix), so the surrogate grows
  linearly with the number of sites; for a :class:`LearningSignal` its
  per-particle signal; for a scalar, the whole value (plain DiCE);
* **exact contractions** over enumerated axes and **branch differences**
  (:mod:`stackvi.gradients.contract`), when some site is laid out along one;
* **baselines** (``b`` in ``(log q − sg log q)·sg(L − b)``), with their state.

A score-function site's own ``log q(z)`` term enters the pathwise value
detached (``E[∇ log q(z)] = 0``; as NumPyro's ``TraceGraph_ELBO``), for linear
values only: under a ``logsumexp`` its weight depends on the sample.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stackvi.estimators.signals import LearningSignal
from stackvi.gradients.contract import (
    branch_axes,
    check_terms,
    contract,
    expected_total,
    needs_contraction,
    select,
    weights,
)
from stackvi.gradients.records import SiteRecord
from stackvi.gradients.strategy import lookup
from stackvi.terms import Term, Terms, align

__all__ = ["surrogate", "estimate", "Signals", "scalar_value"]

sg = jax.lax.stop_gradient


def scalar_value(value) -> jax.Array:
    if isinstance(value, (Terms, LearningSignal)):
        return value.total()
    total = jnp.asarray(value)
    if total.ndim != 0:
        raise ValueError(
            f"an objective program must return Terms or a scalar, got shape {total.shape}; "
            "reduce it (sum/mean/logsumexp) first."
        )
    return total


class Signals:
    """What strategy rules may ask of the estimator about one run (see the module docstring)."""

    def __init__(self, value, records: list[SiteRecord], state: dict | None = None):
        self.value = value
        self.records = records
        self.state = state or {}
        self.new_state: dict = {}
        self.exact = needs_contraction(records)
        if self.exact:
            self.value = check_terms(value, records)
            self.branches = branch_axes(records)
            self.weights = weights(records, self.branches)  # at the branched sites' samples
            self.raw_weights = weights(records)  # along every branch (branch rules)
        self.linear = isinstance(self.value, Terms)
        self._signals: dict = {}
        # own log q terms that enter the pathwise value detached (see the module docstring)
        self.detached = {(r.trace, r.name) for r in records
                         if lookup(r.kind, r.name).detach_own_term}

    # -- the value ---------------------------------------------------------------
    def total(self) -> jax.Array:
        if self.exact:
            return expected_total(self.value, self.records)
        return scalar_value(self.value)

    def pathwise(self) -> jax.Array:
        """The value, differentiable along reparameterized paths and enumeration weights."""
        if not self.linear:
            return scalar_value(self.value)
        out = jnp.zeros(())
        for t in self.value.terms:
            array = sg(t.array) if t.source is not None and t.source in self.detached else t.array
            if self.exact:
                out = out + contract([select(array, t.names, self.branches)], self.weights, t.label)
            else:
                out = out + jnp.sum(array)
        return out

    # -- learning signals ----------------------------------------------------------
    def downstream(self, record: SiteRecord) -> list[Term]:
        """The terms of a linear value that may depend on ``record``'s sample."""
        return [t for t in self.value.terms if t.source is None or t.source not in record.upstream]

    def signal(self, record: SiteRecord) -> jax.Array:
        """``record``'s learning signal laid out like its log-density (no gradient)."""
        lp = record.log_prob
        if isinstance(self.value, LearningSignal):
            return sg(self.value.for_node(lp.names, lp.array.shape))
        if not self.linear:
            return sg(jnp.broadcast_to(scalar_value(self.value), lp.array.shape))
        if self.exact:
            array, names = select(lp.array, lp.names, self.branches)
            out = jnp.zeros(array.shape)
            for t in self.downstream(record):
                f, fnames = select(t.array, t.names, self.branches)
                out = out + contract([(sg(f), fnames)], self.weights, t.label, keep=names)
            return sg(out)
        return self._batched(record)

    @property
    def batchable(self) -> bool:
        """Linear value, nothing enumerated or branched: signals come from one product."""
        return self.linear and not self.exact

    def _layout_signals(self, names, shape, group):
        terms = list(self.value.terms)
        stacked = jnp.stack([jnp.broadcast_to(align(sg(t.array), t.names, names), shape)
                             for t in terms])
        mask = np.array([[t.source is None or t.source not in r.upstream for t in terms]
                         for r in group], dtype=stacked.dtype)
        return masked_sum(mask, stacked)

    def batched_score_terms(self, records: list[SiteRecord]) -> jax.Array:
        """``Σ_records Σ (log q − sg log q) · sg(L)`` as one expression per layout."""
        out = jnp.zeros(())
        layouts: dict = {}
        for r in records:
            layouts.setdefault((r.log_prob.names, r.log_prob.array.shape), []).append(r)
        for (names, shape), group in layouts.items():
            signals = self._layout_signals(names, shape, group)
            lp = jnp.stack([r.log_prob.array for r in group])
            out = out + jnp.sum((lp - sg(lp)) * sg(signals))
        return out

    def _batched(self, record: SiteRecord) -> jax.Array:
        # All records with one layout (axis names) get their signals from one product
        # of a 0/1 (records × terms) matrix with the stacked, aligned terms: the
        # surrogate's size stays linear in the number of sites.
        names = record.log_prob.names
        if names not in self._signals:
            group = [r for r in self.records if r.log_prob.names == names]
            signals = self._layout_signals(names, record.log_prob.array.shape, group)
            self._signals[names] = {id(r): signals[i] for i, r in enumerate(group)}
        return self._signals[names][id(record)]

    # -- the score-function rule, shared by strategies that need it -------------------
    def score_term(self, record: SiteRecord) -> jax.Array:
        """``Σ (log q − sg log q) · sg(L − b)`` for ``record``, with its baseline."""
        lp = record.log_prob
        if self.exact:
            return self._exact_score_term(record)
        signal = self.signal(record)
        out = jnp.zeros(())
        if record.baseline is not None:
            self.check_baseline(record)
            b, fit = self.baseline(record, signal, record)
            signal = signal - sg(b)
            out = out + fit
        return out + jnp.sum((lp.array - sg(lp.array)) * signal)

    def _exact_score_term(self, record):
        lp, names = select(record.log_prob.array, record.log_prob.names, self.branches)
        d = lp - sg(lp)
        acc = jnp.zeros(())
        for t in self.downstream(record):
            f, fnames = select(t.array, t.names, self.branches)
            acc = acc + contract([(d, names), (sg(f), fnames)], self.weights, t.label)
        if record.baseline is not None:
            self.check_baseline(record)
            signal = self.signal(record)
            flat = record._replace(log_prob=Term(record.log_prob.label, lp, names))
            b, fit = self.baseline(flat, signal, record)
            acc = acc + fit - contract(
                [(d, names), (sg(jnp.broadcast_to(b, lp.shape)), names)], self.weights,
                record.name)
        return acc

    def check_baseline(self, record):
        """Refuse a baseline that needs per-particle costs when the objective has none."""
        if record.baseline.needs_terms and not self.linear:
            # Every particle's signal is the same scalar, so the other particles' mean
            # *is* this particle's signal: silently biased, never allowed. (A
            # LearningSignal's per-particle signals already depend on the others too.)
            kind = "a LearningSignal" if isinstance(self.value, LearningSignal) else "a scalar"
            raise ValueError(
                f"site '{record.name}': baseline {record.baseline!r} needs an objective that "
                "returns Terms (independent per-particle costs, e.g. "
                f"estimators.elbo(..., num_particles=K)), but this objective returns {kind}. "
                "Use baseline='ema' (MovingAverage) here instead."
            )

    def baseline(self, record, signal, key_record):
        """``(b, fit)``: ``record``'s baseline for ``signal`` and its fitting term; the
        baseline's new state is kept under ``key_record``'s name in ``new_state``."""
        key = key_record.name
        st = self.state.get(key, record.baseline.init_state())
        b, self.new_state[key], fit = record.baseline.evaluate(signal, record, st)
        return b, fit


def masked_sum(mask: np.ndarray, stacked: jax.Array) -> jax.Array:
    """``mask @ stacked`` over the leading axis, ``mask`` a constant 0/1 matrix.

    The barrier hides that the mask is a constant. Otherwise XLA rewrites
    dot(constant, stack(xs)) as Σ_t mask[:, t]·x_t, an elementwise expression it then
    recomputes inside every site's gradient: a compiled module quadratic in the sites
    although the traced program is linear (test_findings, finding 11).
    """
    return jnp.tensordot(jax.lax.optimization_barrier(jnp.asarray(mask)), stacked, axes=1)


def _run(value, records, state):
    ctx = Signals(value, records, state)
    out = ctx.pathwise()
    by_kind: dict = {}
    for record in records:
        by_kind.setdefault(record.kind, []).append(record)
    for kind, group in by_kind.items():
        out = out + lookup(kind, group[0].name).gradients(group, ctx)
    return ctx.total(), out, ctx.new_state


def surrogate(value, records: list[SiteRecord], state: dict | None = None):
    """``(value_scalar, surrogate_scalar, new_state)`` for a program's value and records."""
    try:
        return _run(value, records, state)
    except jax.errors.UnexpectedTracerError as err:
        raise ValueError(_LEAK) from err


def estimate(value, records: list[SiteRecord]) -> jax.Array:
    """The objective's Monte Carlo estimate (enumerated axes contracted exactly)."""
    try:
        if needs_contraction(records):
            return expected_total(value, records)
        return scalar_value(value)
    except jax.errors.UnexpectedTracerError as err:
        raise ValueError(_LEAK) from err


_LEAK = (
    "a site was sampled inside a JAX transformation that the objective cannot see (your own "
    "jax.vmap, lax.scan, lax.map or jit around part of the program), so its gradient record "
    "escaped it. Vectorize samples with stackvi.estimators.particles(fn, K) instead of "
    "jax.vmap, and write loops with numpyro.contrib.control_flow.scan."
)
