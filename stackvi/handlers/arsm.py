"""``arsm``: ARSM gradients for Categorical sites (Yin, Yue & Zhou, ICML 2019).

"ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient Backpropagation Through
Categorical Variables", the categorical extension of ARM (:mod:`stackvi.handlers.disarm`).

For ``z ~ Categorical(logits=φ)`` with ``C`` categories, draw ``π ~ Dirichlet(1_C)``
and set ``z = argmin_i π_i e^{−φ_i}`` (``π_i e^{−φ_i}`` are, up to a common
factor, independent exponentials of rates ``e^{φ_i}``: ``z`` has law ``softmax(φ)``).

* **Augment–REINFORCE**: ``∇_{φ_c} E[f(z)] = E[f(z) (1 − C π_c)]``.
* **Swap**: ``π^{m⇌j}`` (entries ``m``, ``j`` of ``π`` exchanged) has the law of ``π``,
  so with ``z^{m⇌j} = argmin_i π^{m⇌j}_i e^{−φ_i}`` and ``f^{m⇌j} = f(z^{m⇌j})``,
  ``∇_{φ_c} E f = E[f^{c⇌j} (1 − C π_j)]`` for every ``j``.
* **Merge**: averaging over ``j`` and subtracting the baseline ``f̄^j = (1/C) Σ_m
  f^{m⇌j}`` (the same for every ``c``; zero mean, since ``Σ_c ∇_{φ_c} E f = 0``):

      g_c = Σ_j (f^{c⇌j} − f̄^j) (1/C − π_j)

  unbiased for ``∇_{φ_c} E[f(z)]``. ``z^{j⇌j} = z`` and ``z^{m⇌j} = z^{j⇌m}``, so it
  needs ``f`` at ``z`` and at ``C(C − 1)/2`` swapped pseudo-actions; the coefficients on
  ``f`` sum to zero for each ``c``, so ``g_c = Σ_{m<j} W_{c,mj} (f^{m⇌j} − f(z))`` with
  ``W_{c,mj} = (δ_{mc} − 1/C)(1/C − π_j) + (δ_{jc} − 1/C)(1/C − π_m)``. A swap that
  leaves ``z`` unchanged contributes exactly 0 (its costs are those of ``z``, same noise).

The site's term of the surrogate is ``Σ_c (φ_c − sg φ_c) · sg(g_c)`` per element, ``f``
the site's learning signal (the costs of its element, as for ``mvd``); the objective's
value uses ``z``. ``φ`` are the site's logits (``Categorical(probs=p)`` reads them as
``log p``: its law is ``softmax(log p)`` for normalized ``p``).

**The sample and π.** The site is drawn as usual, and ``π`` is drawn *given* ``z``: in the
exponential race the winner's time ``M`` is independent of which index won, and the
others' are ``M`` plus independent exponentials (memorylessness), which gives
``π ∝ p_i e₀ + 1[i ≠ z] E_i`` with ``p = softmax(φ)`` and ``e₀, E_i ~ Exp(1)``: the pair
``(z, π)`` has exactly the joint law of ``π ~ Dirichlet(1)``, ``z = argmin``.

**Mechanism: continuations** (:mod:`stackvi.gradients.rerun`, as ``mvd`` by default).
The pseudo-actions are just other values of the site, which is what a re-run
substitutes: after the main pass the objective's program is re-run once per claimed
site, ``vmap``-ped over the ``C(C − 1)/2`` swaps, each plate element at its own
pseudo-action (every element has its own ``π``; a cost of element *i* reads only
element *i*, which the data flow checks). Why this and not a branch axis like
``disarm``'s: it also serves nonlinear objectives (IWAE, VIMCO: a swap changes the site
in one particle at a time, and the branch cost is the bound itself), several claimed
sites cost a sum of re-runs rather than a product of branch axes, and upstream work is
not repeated over the swaps. A claimed site therefore needs an objective
(``estimators.elbo``, ``iwae``, …) to run it; outside one it is an error.

**Cost.** ``C(C − 1)/2`` forward-only evaluations of the program downstream of the site
per claimed site (all elements of a plate at once), plus the main pass: 3 for ``C = 3``,
10 for ``C = 5``, 45 for ``C = 10``. All are evaluated, including swaps that turn out not
to change ``z`` (their difference is 0): the paper's saving of skipping those is not
available to a fixed-shape, vectorized computation. First derivatives only. For a
Categorical site ``mvd`` needs ``C`` re-runs and is exact in the site (the rest sampled):
in the tests it had lower variance at lower cost for ``C ≥ 3``, as ``unordered_set``
did; ``arsm`` is here, like ``arm``, mainly to compare with the literature
(``docs/strategies.md`` has the numbers).

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("c", dist.Categorical(probs=jnp.ones(3) / 3))
>>> def guide():
...     numpyro.sample("c", dist.Categorical(logits=numpyro.param("a", jnp.zeros(3))))
>>> obj = estimators.elbo(model, arsm(guide))
>>> _, grads = jax.jit(obj.value_and_grad)({"a": jnp.zeros(3)}, jax.random.PRNGKey(0))
>>> grads["a"].shape
(3,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import random

from stackvi.gradients import (
    Axis,
    Strategy,
    contract,
    dist_name,
    plated_term,
    register,
    require_family,
    rerun,
    select,
    unwrapped,
)

__all__ = ["arsm", "swap_pairs", "pseudo_actions", "swap_weights"]

sg = jax.lax.stop_gradient


def _categorical(fn):
    base = unwrapped(fn)
    return base if isinstance(base, (dist.CategoricalLogits, dist.CategoricalProbs)) else None


def swap_pairs(num_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """``(m, j)``: the ``C(C − 1)/2`` swaps ``m < j``, in a fixed order (the branch order).

    >>> [tuple(map(int, a)) for a in swap_pairs(3)]
    [(0, 0, 1), (1, 2, 2)]
    """
    return np.triu_indices(num_categories, 1)


def pseudo_actions(logits, z, key):
    """``(ys, π)``: the swapped pseudo-actions ``(J, *batch)`` and ``π`` ``(*batch, C)``.

    ``π`` is drawn given the sample ``z`` (see the module docstring), so that ``z =
    argmin_i π_i e^{−φ_i}``; ``ys[k] = argmin_i π^{m⇌j}_i e^{−φ_i}`` for swap ``k`` of
    :func:`swap_pairs`. Comparisons are made in log space (``log π_i − log p_i``), so
    extreme logits neither overflow nor divide by zero. No gradient flows.
    """
    logp = jax.nn.log_softmax(sg(logits), -1)
    c = logp.shape[-1]
    k0, k1 = random.split(key)
    log_e0 = jnp.log(random.exponential(k0, logp.shape[:-1] + (1,)))
    log_e = jnp.log(random.exponential(k1, logp.shape))
    own = jnp.arange(c) == jnp.expand_dims(z, -1)
    # π ∝ p_i e₀ + 1[i ≠ z] E_i: the exponential race given that z won it
    log_pi = jnp.where(own, logp + log_e0, jnp.logaddexp(logp + log_e0, log_e))
    log_pi = log_pi - jax.scipy.special.logsumexp(log_pi, -1, keepdims=True)
    m, j = swap_pairs(c)
    perm = np.tile(np.arange(c), (m.size, 1))
    perm[np.arange(m.size), m], perm[np.arange(m.size), j] = j, m
    swapped = log_pi[..., perm]  # (*batch, J, C)
    ys = jnp.argmin(swapped - logp[..., None, :], axis=-1)
    return jnp.moveaxis(ys, -1, 0), jnp.exp(log_pi)


def swap_weights(pi):
    """``W`` ``(*batch, C, J)``: ``g_c = Σ_k W[c, k] (f(ys[k]) − f(z))`` (module docstring)."""
    c = pi.shape[-1]
    m, j = swap_pairs(c)
    eye = np.eye(c)
    a = 1.0 / c - pi[..., j]  # (*batch, J): weight of the swap's f on category m's row
    b = 1.0 / c - pi[..., m]
    return ((eye[:, m] - 1.0 / c) * a[..., None, :] + (eye[:, j] - 1.0 / c) * b[..., None, :])


@register
class arsm(Strategy):
    """ARSM for the claimed Categorical sites (see the module docstring)."""

    name = "arsm"
    owns_value = True
    detach_own_term = True  # E[∇ log q(z)] = 0: its own log q enters the value detached

    @classmethod
    def validate(cls, msg, claimer):
        require_family(_categorical(msg["fn"]), msg, claimer, cls.name, "Categorical",
                       why=" (logits or probs)",
                       instead="disarm for Bernoulli sites, mvd, enumerate or reinforce for others")
        if _categorical(msg["fn"]).logits.shape[-1] < 2:
            raise ValueError(
                f"{claimer}: site '{msg['name']}' ({dist_name(msg)}) has a single category: "
                "nothing to differentiate. Use reinforce (or leave it unclaimed)."
            )

    @classmethod
    def prepare(cls, msg):
        if msg["value"] is not None:
            return
        fn = msg["fn"]
        batch = tuple(fn.batch_shape)
        base = _categorical(fn)
        logits = jnp.broadcast_to(base.logits, batch + base.logits.shape[-1:])
        got = {}

        def decompose(z, key):
            ys, pi = pseudo_actions(logits, z, key)
            got["weights"] = swap_weights(pi)
            return ys, []

        if not rerun.prepare(msg, decompose, cls.name):
            return  # not inside an objective's run: a plain sample (transform refuses it)
        if "_stackvi_continuation" not in msg["infer"]:
            return  # the blocked pre-run that finds the plate nesting
        cat, swap = Axis(f"arsm:{msg['name']}:category"), Axis(f"arsm:{msg['name']}:swap")
        w = got["weights"]
        extra = (plated_term(msg, logits, cat, "logits"),
                 plated_term(msg, sg(w).reshape(batch + (-1,)), swap, "swap weights"))
        msg["infer"]["_stackvi_arsm"] = extra

    @classmethod
    def transform(cls, msg):
        if "_stackvi_continuation" not in msg["infer"]:
            raise ValueError(
                f"site '{msg['name']}' ({dist_name(msg)}) is claimed by {cls.name} outside an "
                "objective: its swapped pseudo-actions are evaluated by re-running the "
                "objective's program. Run the guide through an estimator (estimators.elbo, "
                "estimators.iwae, ...)."
            )
        msg["intermediates"] = []

    @classmethod
    def record(cls, msg):
        record = rerun.record(msg, cls.name)
        if record is None:
            return None
        # extra: logits (*plates, category), swap weights (*plates, category·swap); the
        # re-runs (rerun.attach) append the costs at z and at each pseudo-action
        return record._replace(extra=msg["infer"]["_stackvi_arsm"])

    @classmethod
    def gradient(cls, record, ctx):
        """``Σ_c (φ_c − sg φ_c) · sg(Σ_k W[c, k] (f_k − f_0))`` per element, contracted."""
        lp = record.log_prob
        if len(record.extra) != 3:
            raise ValueError(
                f"site '{record.name}' (claimed by {record.kind}) has no costs at its swapped "
                "pseudo-actions: they are evaluated by Objective.value_and_grad (the program "
                "is re-run); surrogate() on hand-collected records cannot do that."
            )
        cat, swap = record.extra[0].names[-1], record.extra[1].names[-1]
        c = record.extra[0].array.shape[-1]
        w = ctx.weights if ctx.exact else {}
        branches = ctx.branches if ctx.exact else set()
        logits = select(record.extra[0].array, record.extra[0].names, branches)
        weights, wnames = select(record.extra[1].array, record.extra[1].names, branches)
        weights = weights.reshape(weights.shape[:-1] + (c, -1))
        wnames = wnames[:-1] + (cat, swap)
        f = record.extra[2].array  # (1 + J, *log-density shape), entry 0 at z
        diff = f[1:] - f[:1]
        return contract([(logits[0] - sg(logits[0]), logits[1]), (sg(weights), wnames),
                         (sg(diff), (swap,) + lp.names)], w, record.name)
