"""``unordered_set``: the unordered set estimator for Categorical sites (Kool et al., 2020).

Kool, van Hoof & Welling, "Estimating gradients for discrete random variables by
sampling without replacement", ICLR 2020.

A claimed site draws ``k`` *distinct* categories ``S = {s_1, …, s_k}`` without
replacement (Gumbel-top-k: the ``k`` largest of ``log p_c + Gumbel_c``, so
``s_1``, the arg-max, is an ordinary draw from ``p`` and is what the
objective's value uses). Every cost downstream is evaluated at all ``k`` values
in one vectorized pass (the values along a branch axis,
:mod:`stackvi.gradients.branches`), and the gradient is the unordered set
estimator with its built-in baseline (Kool et al. 2020, eq. for the
"unordered set policy gradient estimator with baseline"):

    ∇ E_p[f] = E_S[ Σ_{s∈S} ∇p(s) R(S, s) (f(s) − B(S, s)) ]
    R(S, s)  = p^{D∖{s}}(S∖{s}) / p(S)                       (leave-one-out ratio)
    B(S, s)  = p(s) f(s) + Σ_{s'∈S∖{s}} p(s') R^{D∖{s}}(S, s') f(s')
    R^{D∖{s}}(S, s') = p^{D∖{s,s'}}(S∖{s,s'}) / p^{D∖{s}}(S∖{s})

``p(S)`` is the probability of drawing the *unordered* set ``S``: the sum over
its ``k!`` orderings of ``Π_t p(s_{σ_t}) / (1 − Σ_{u<t} p(s_{σ_u}))``, and
``p^{D∖A}`` the same with the categories ``A`` removed from the domain
(``1 − p(A) − …`` in the denominators). The baseline is ``p(s) f(s)`` plus the
unordered set estimate (size ``k − 1``, over ``D∖{s}``) of the rest of
``E_p[f]``; its conditional expectation given ``s ∈ S`` is ``E_p[f]`` for
every ``s``, which is why it adds no bias — and why ``k ≥ 2`` is required
(with ``k = 1`` there is no rest to estimate it from). With ``k`` equal to the
number of categories the estimator is exact enumeration.

Cost: ``k`` evaluations of every downstream cost; the set probabilities sum
over orderings, ``O(k · k!)`` per element, so ``k ≤ 6`` here (the paper
integrates numerically for larger ``k``). Per element: plate elements draw
their sets independently.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("c", dist.Categorical(probs=jax.numpy.ones(4) / 4))
>>> def guide():
...     numpyro.sample("c", dist.Categorical(logits=numpyro.param("a", jax.numpy.zeros(4))))
>>> obj = estimators.elbo(model, unordered_set(guide, k=3))
>>> _, grads = jax.jit(obj.value_and_grad)(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> grads["a"].shape
(4,)
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro.distributions.distribution import ExpandedDistribution, Independent, MaskedDistribution

from stackvi.gradients import (
    SiteRecord,
    Strategy,
    allocate_dim,
    branch_costs,
    branch_difference,
    check_plated,
    contract,
    lay_out,
    register,
    require_family,
    select,
    site_term,
    upstream_weights,
)
from stackvi.terms import site_log_prob

__all__ = ["unordered_set", "set_coefficients", "MAX_K"]

sg = jax.lax.stop_gradient

MAX_K = 6  # the set probabilities sum over k! orderings


def _categorical(fn):
    while isinstance(fn, (ExpandedDistribution, Independent, MaskedDistribution)):
        fn = fn.base_dist
    return fn if isinstance(fn, (dist.CategoricalLogits, dist.CategoricalProbs)) else None


def _log_set_prob(lp_s, rest, members: tuple, excluded: int):
    """``log p^{D∖A}(B)`` for the unordered set ``B`` (indices into ``S``), ``A`` a bitmask.

    ``lp_s``: ``(..., k)`` log-probs of the drawn categories; ``rest``: ``(..., 2^k)``
    ``log(1 − p(E))`` for every subset ``E`` of ``S`` (a bitmask).
    """
    if not members:
        return jnp.zeros(lp_s.shape[:-1])
    orders = []
    for perm in itertools.permutations(members):
        acc, gone = 0.0, excluded
        for j in perm:
            acc = acc + lp_s[..., j] - rest[..., gone]
            gone |= 1 << j
        orders.append(acc)
    return jax.scipy.special.logsumexp(jnp.stack(orders), axis=0)


def set_coefficients(logp, idx):
    """``A (..., k, k)``: the estimator is ``Σ_j ∇log p(s_j) · Σ_i A[j, i] f(s_i)``.

    ``logp``: ``(..., n)`` normalized log-probabilities; ``idx``: ``(..., k)`` the
    drawn (distinct) categories. ``A[j, j] = p_j R_j (1 − p_j)`` and
    ``A[j, i] = −p_j R_j p_i R^{D∖{s_j}}_i`` (see the module docstring).
    """
    k, n = idx.shape[-1], logp.shape[-1]
    lp_s = jnp.take_along_axis(logp, idx, axis=-1)
    onehot = jax.nn.one_hot(idx, n, dtype=bool)  # (..., k, n)
    subsets = np.array([[(m >> j) & 1 for j in range(k)] for m in range(2**k)], dtype=bool)
    gone = jnp.any(onehot[..., None, :, :] & subsets[:, :, None], axis=-2)  # (..., 2^k, n)
    # log of the mass left after removing each subset, summed over what is left (no 1 − x
    # cancellation when one category holds almost all the mass)
    rest = jax.scipy.special.logsumexp(jnp.where(gone, -jnp.inf, logp[..., None, :]), axis=-1)
    full = tuple(range(k))
    log_ps = _log_set_prob(lp_s, rest, full, 0)
    rows = []
    for j in range(k):
        others = tuple(i for i in full if i != j)
        log_pj = _log_set_prob(lp_s, rest, others, 1 << j)
        coef = jnp.exp(lp_s[..., j] + log_pj - log_ps)  # p_j R(S, s_j)
        row = []
        for i in full:
            if i == j:
                row.append(coef * jnp.exp(rest[..., 1 << j]))  # · (1 − p_j)
            else:
                log_pij = _log_set_prob(lp_s, rest, tuple(u for u in others if u != i),
                                        (1 << j) | (1 << i))
                row.append(-coef * jnp.exp(lp_s[..., i] + log_pij - log_pj))
        rows.append(jnp.stack(row, axis=-1))
    return jnp.stack(rows, axis=-2)


@register
class unordered_set(Strategy):
    """The unordered set estimator with ``k`` draws without replacement (module docstring).

    ``unordered_set(guide, sites=[...], k=3)``; in ``configure``:
    ``("unordered_set", {"k": 3})``; in an infer dict: ``{"strategy": "unordered_set", "k": 3}``.
    """

    name = "unordered_set"
    owns_value = True
    detach_own_term = True  # E[∇ log q(s_1)] = 0: its own log q enters the value detached

    def __init__(self, fn=None, sites=None, k: int = 2):
        super().__init__(fn, sites, k=k)

    @staticmethod
    def validate(msg, claimer):
        base = _categorical(msg["fn"])
        require_family(base, msg, claimer, "unordered_set", "Categorical",
                       instead="enumerate, mvd or reinforce")
        k, n = msg["infer"].get("k", 2), base.logits.shape[-1]
        if not isinstance(k, int) or not 2 <= k <= min(n, MAX_K):
            raise ValueError(
                f"{claimer}: site '{msg['name']}' (Categorical with {n} categories) asks for "
                f"k={k!r} draws without replacement; unordered_set needs an int "
                f"2 ≤ k ≤ min({n}, {MAX_K}) (k = 1 has no built-in baseline: use reinforce; "
                "k = all categories is enumerate)."
            )

    @staticmethod
    def prepare(msg):
        if msg["value"] is not None:
            return
        got = allocate_dim(msg, "unordered_set")
        if got is None:
            return
        dim, axis = got
        check_plated(msg, "unordered_set")
        fn, base = msg["fn"], _categorical(msg["fn"])
        k = msg["infer"].get("k", 2)
        batch = tuple(fn.batch_shape)
        logp = jax.nn.log_softmax(jnp.broadcast_to(base.logits, batch + base.logits.shape[-1:]))
        gumbel = random.gumbel(numpyro.prng_key(), logp.shape)
        _, idx = jax.lax.top_k(sg(logp) + gumbel, k)  # (*batch, k): s_1 ~ p, then w/o replacement
        idx = idx.astype(jnp.result_type(int))
        coord, _ = lay_out(msg, idx[..., 0], jnp.moveaxis(idx[..., 1:], -1, 0), dim, axis)
        lp_s = jnp.take_along_axis(logp, idx, axis=-1)  # with gradient
        a = sg(set_coefficients(sg(logp), idx))
        extra = tuple(site_term(msg, lp_s[..., j], coord, f"lp{j}") for j in range(k))
        extra += tuple(site_term(msg, a[..., j, i], coord, f"a{j}{i}")
                       for j in range(k) for i in range(k))
        msg["infer"]["_stackvi_unordered_set"] = (extra, (coord, k))

    @staticmethod
    def transform(msg):
        if "_stackvi_unordered_set" not in msg["infer"]:
            raise ValueError(
                f"site '{msg['name']}' is claimed by unordered_set outside an objective: its k "
                "values need the dims an objective hands out (run it through estimators.elbo)."
            )
        msg["intermediates"] = []

    @classmethod
    def record(cls, msg):
        extra, static = msg["infer"]["_stackvi_unordered_set"]
        return SiteRecord(msg["name"], site_log_prob({**msg, "scale": None}), cls.name,
                          axis=msg["infer"]["_stackvi_axis"], extra=extra, static=static)

    @classmethod
    def gradient(cls, record, ctx):
        """``Σ_i Σ_j (log p_j − sg) · sg(A[j, i] f(s_i))``, per element, contracted exactly."""
        coord, k = record.static

        def get(t):
            return select(t.array, t.names, ctx.branches)

        lps = [get(t) for t in record.extra[:k]]
        a = [[get(record.extra[k + j * k + i]) for i in range(k)] for j in range(k)]
        names = lps[0][1]
        own = [n for n in names if n != coord and n not in ctx.weights]
        costs = list(branch_costs(ctx.value, record, ctx.raw_weights, ctx.branches))
        up = upstream_weights(ctx.raw_weights, record, ctx.branches)
        acc = jnp.zeros(())
        for i in range(k):
            # the coefficient of f(s_i): Σ_j ∇log p(s_j) A[j, i], value 0
            c = sum((lps[j][0] - sg(lps[j][0])) * sg(a[j][i][0]) for j in range(k))
            # branch of s_i: the sample (-1) for i = 0, extra draw i − 1 otherwise
            for f, fnames, label in branch_difference(costs, record, i - 1, None, 1, coord, own):
                acc = acc + contract([(c, names), (sg(f), fnames)], up, label)
        return acc
