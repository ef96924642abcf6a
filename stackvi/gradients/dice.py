"""Any-order derivatives: the surrogate in DiCE form (Foerster et al., 2018).

:func:`~stackvi.gradients.surrogate.surrogate` is built for first derivatives:
its score terms ``(log q − sg log q)·sg(L)`` have the right gradient, but
their own derivatives are not the objective's second derivatives. For those,
every cost term ``c`` is multiplied by the *magic box* of the log-densities of
the score-function sites it may depend on,

    surrogate = Σ_c  ⊡(Σ_{z → c} log q(z)) · c  +  Σ_z (1 − ⊡(log q(z))) · b_z,
    ⊡(x) = exp(x − sg(x))     (value 1, ∇⊡(x) = ⊡(x)·∇x),

so that ``∇ⁿ surrogate`` is an unbiased estimate of ``∇ⁿ E[Σ c]`` for every
``n`` (the baseline terms, of Mao et al. 2019, have expectation zero at every
order). "``c`` may depend on ``z``" is the relation the first-order estimator
uses (:class:`~stackvi.gradients.surrogate.Signals`: plate elements matched by
name, upstream terms left out), computed per layout of terms with one 0/1
product, so the surrogate stays linear in the number of sites.

Which strategies admit it is a property of each strategy class
(``Strategy.higher_order``): ``reinforce`` (``"score"``) and ``enumerate``
(``"exact"``: the exact weights keep their derivatives of every order) do;
``mvd``, ``disarm`` and other branch rules are first-order constructions, and
asking for their higher derivatives is an error naming the site. A mix of
enumerated and score-function sites is refused too (not implemented). An
objective that returns a :class:`~stackvi.estimators.signals.LearningSignal`
(per-datapoint ``iwae``, ``vimco``) gets plain DiCE on its scalar value: unbiased
at every order, without the first-order estimator's per-element variance reduction.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("x", dist.Normal(numpyro.sample("b", dist.Bernoulli(0.5)), 1.0), obs=1.0)
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", 0.3)))
>>> obj = estimators.elbo(model, guide, num_particles=4)
>>> h = jax.hessian(obj.surrogate)({"l": jnp.array(0.3)}, jax.random.PRNGKey(0))
>>> bool(jnp.isfinite(h["l"]["l"]))
True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stackvi.gradients.contract import needs_contraction
from stackvi.gradients.records import SiteRecord
from stackvi.gradients.strategy import lookup
from stackvi.gradients.surrogate import Signals, masked_sum, scalar_value
from stackvi.terms import Terms, align

__all__ = ["magic", "any_order_surrogate"]

sg = jax.lax.stop_gradient


def magic(x: jax.Array) -> jax.Array:
    """DiCE's magic box ``exp(x − sg(x))``: value 1, derivative ``magic(x)·∇x`` at every order."""
    return jnp.exp(x - sg(x))


def _check(value, records: list[SiteRecord]) -> str:
    """``"score"`` or ``"exact"``: the one higher-order rule that covers every record."""
    rules = {}
    for r in records:
        rule = lookup(r.kind, r.name).higher_order
        if rule is None:
            raise ValueError(
                f"site '{r.name}': strategy {r.kind!r} gives first derivatives only, so "
                "objective.surrogate (any-order derivatives) is not available. Use "
                "value_and_grad for gradients, or claim the site with reinforce or enumerate."
            )
        rules.setdefault(rule, r.name)
    if len(rules) > 1:
        raise ValueError(
            f"objective.surrogate: enumerated site '{rules['exact']}' together with "
            f"score-function site '{rules['score']}' is not supported for higher derivatives; "
            "enumerate both or use reinforce for both."
        )
    return next(iter(rules), "score")


def _cost_factors(value: Terms, records: list[SiteRecord]) -> jax.Array:
    """``Σ_c Σ ⊡(Σ_{z → c} log q(z)) · c`` with one 0/1 product per layout of terms."""
    out = jnp.zeros(())
    layouts: dict = {}
    for t in value.terms:
        layouts.setdefault((t.names, t.array.shape), []).append(t)
    for (names, shape), group in layouts.items():
        if not records:
            out = out + sum(jnp.sum(t.array) for t in group)
            continue
        log_q = jnp.stack([jnp.broadcast_to(align(r.log_prob.array, r.log_prob.names, names),
                                            shape) for r in records])
        mask = np.array([[t.source is None or t.source not in r.upstream for r in records]
                         for t in group], dtype=log_q.dtype)
        exponents = masked_sum(mask, log_q)
        costs = jnp.stack([t.array for t in group])
        out = out + jnp.sum(magic(exponents) * costs)
    return out


def _baseline_terms(value, records: list[SiteRecord], state: dict | None):
    """``Σ_z (1 − ⊡(log q(z)))·sg(b_z)`` (zero mean at every order) plus the fit terms."""
    with_baseline = [r for r in records if r.baseline is not None]
    if not with_baseline:
        return jnp.zeros(()), {}
    ctx = Signals(value, records, state)
    out = jnp.zeros(())
    for r in with_baseline:
        ctx.check_baseline(r)
        b, fit = ctx.baseline(r, ctx.signal(r), r)
        lp = r.log_prob.array
        out = out + jnp.sum((1.0 - magic(lp)) * sg(jnp.broadcast_to(b, lp.shape))) + fit
    return out, ctx.new_state


def any_order_surrogate(value, records: list[SiteRecord], state: dict | None = None):
    """``(value_scalar, surrogate, new_state)``: derivatives of every order of ``surrogate``
    are unbiased estimates of the objective's (see the module docstring)."""
    rule = _check(value, records)
    if rule == "exact" or needs_contraction(records):
        ctx = Signals(value, records, state)
        return ctx.total(), ctx.pathwise(), {}
    if isinstance(value, Terms):
        out = _cost_factors(value, records)
    else:
        # One cost that may depend on every sample (plain DiCE). A LearningSignal's
        # per-element signals (per-datapoint IWAE, VIMCO's leave-one-out) are first-order
        # constructions, not a decomposition of the cost, so only its scalar value is used.
        total = scalar_value(value)
        exponent = sum((jnp.sum(r.log_prob.array) for r in records), start=jnp.zeros(()))
        out = magic(exponent) * total
    fits, new_state = _baseline_terms(value, records, state)
    return scalar_value(value), out + fits, new_state
