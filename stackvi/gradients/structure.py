"""The structure an estimator needs, derived from the traces themselves.

Two facts about each non-pathwise site, both read off traces by the library
(never supplied by a program), so every objective gets them:

* **Plate pooling** (:func:`pool_shared_plates`, when :func:`simulate` ends).
  Element *i* of a plate is given only element *i*'s costs, which is valid
  only if nothing downstream mixes the elements. A guide site sampled later
  *outside* that plate (``z ~ q(z | mean(b))``) may depend on every element,
  and then so may every cost: the record is summed over that plate (plain
  REINFORCE along it; unbiased, less Rao-Blackwellized) — unless the
  objective's data-flow analysis shows that no term outside the plate reads
  the sample (:mod:`stackvi.gradients.dataflow`).
* **Upstream terms** (:func:`mark_upstream`, when a model is scored against a
  guide trace). By program order, as NumPyro's ``TraceGraph_ELBO`` does by
  provenance: ``log q(w)`` for ``w`` sampled before ``z`` in the guide, and
  ``log p(w | …)`` for ``w`` reached before ``z`` in the model while every
  latent so far took its value from before ``z`` in the guide. Those terms
  cannot depend on ``z`` and are left out of its learning signal (a global
  latent's log-density no longer sits in every plate element's signal).
  Terms are matched by their ``source`` (trace token, site), never by label.
"""

from __future__ import annotations

import jax.numpy as jnp

from stackvi.gradients.records import Recorder
from stackvi.terms import Term

__all__ = ["pool_shared_plates", "apply_pooling", "mark_upstream"]


def _latent_order(tr: dict) -> list[str]:
    return [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


def pool_shared_plates(rec: Recorder, start: int, guide_trace: dict) -> None:
    """Mark ``rec.records[start:]`` to be summed over plates whose elements a later guide site
    may mix (``SiteRecord.pooled``; the objective sums them, :func:`apply_pooling`)."""
    from stackvi.gradients.rerun import is_continuation

    order = _latent_order(guide_trace)
    plates = {n: {f.name for f in guide_trace[n]["cond_indep_stack"]} for n in order}
    for i in range(start, len(rec.records)):
        record, term = rec.records[i], rec.records[i].log_prob
        if record.name not in plates or record.axis is not None or is_continuation(record):
            # enumerated / branched sites are exact per element: nothing to pool (a site
            # branched by re-runs: data flow refuses a cost outside its plate that reads it)
            continue
        later = order[order.index(record.name) + 1:]
        own = plates[record.name]
        pooled = {p for p in term.names if p in own and any(p not in plates[w] for w in later)}
        if pooled:
            rec.records[i] = record._replace(pooled=frozenset(pooled))


def apply_pooling(records: list) -> list:
    """Each record's ``log_prob`` summed over its ``pooled`` plates (then none are left)."""
    out = []
    for record in records:
        term = record.log_prob
        if record.pooled:
            axes = tuple(k for k, p in enumerate(term.names) if p in record.pooled)
            kept = tuple(p for p in term.names if p not in record.pooled)
            record = record._replace(
                log_prob=Term(term.label, jnp.sum(term.array, axes), kept, term.source),
                pooled=frozenset())
        out.append(record)
    return out


def mark_upstream(rec: Recorder, guide_trace, model_trace) -> None:
    """Add to each record of ``guide_trace`` the keys of terms that cannot depend on it."""
    g_token = getattr(guide_trace, "token", None)
    m_token = getattr(model_trace, "token", None)
    if g_token is None:
        return
    g = [n for n, s in guide_trace.items() if s["type"] == "sample"]
    m = [n for n, s in model_trace.items() if s["type"] == "sample"]
    for i, record in enumerate(rec.records):
        if record.trace != g_token or record.name not in g:
            continue
        before_g = set(g[:g.index(record.name)])
        up = {(g_token, w) for w in before_g}
        if m_token is not None and record.name in m:
            # p(w | parents) reads the values of model sites before w: it is free of the
            # record's sample only while every latent so far was sampled before it in the
            # guide (a later guide sample may depend on it), so stop at the first that was not.
            for w in m[:m.index(record.name)]:
                if not (model_trace[w]["is_observed"] or w in before_g):
                    break
                up.add((m_token, w))
        rec.records[i] = record._replace(upstream=record.upstream | frozenset(up))
