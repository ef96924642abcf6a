"""``smc_marginalize``: a particle filter in place of a model's ``scan``.

Contract. Under ``smc_marginalize(model, num_particles=K)``, every
``numpyro.contrib.control_flow.scan`` the model runs is replaced by a particle
filter over its carry: ``K`` particles, each step resamples the carries by
ancestor indices (``resampling`` scheme; only when the effective sample size
is at most ``ess_threshold·K``), proposes the step's latent sites (from the
model's own transition — *bootstrap* — or from ``proposal``), and weights
them by the step's observed sites (times ``p/q`` for a proposal). The scan's
latent sites vanish from the model's trace; in their place one observed site
``name`` (a factor) carries ``log Ẑ``, where ``Ẑ`` is SMC's **unbiased**
estimate of the marginal density of the scan's observations given everything
outside the scan (so ``E[log Ẑ] ≤ log Z``). Any ELBO/IWAE over the remaining
sites is then FIVO / variational SMC (:func:`stackvi.estimators.fivo`).

What the model gets back from ``scan``: one path (carry and ``ys``) traced
back through the ancestors from a particle drawn by the final weights, with
the original shapes. Sites *after* the scan that depend on it see that path;
their density is not part of ``Ẑ``.

Writing the transition. ``transition(carry, x)`` is written for one particle;
the handler ``vmap``s it over ``K``. The carry must keep its shapes and dtypes
from step to step; the initial carry is shared by all particles (start the
filter from a fixed carry, e.g. ``x_0 = 0`` with ``x_1 = A x_0 + noise``).
``param`` sites inside the transition or the proposal are resolved once,
outside the loop, so they are optimized like any other parameter.
Conditioning the scan from outside (``condition``/``substitute`` with a time
series or a per-step value) is honoured at every step.

Gradients. Latent samples with a reparameterized sampler are pathwise; the
others are detached and their log-densities enter one score-function node
(never silently dropped). Ancestor draws are not differentiable: by default
(``resampling_gradient="drop"``) their score term is dropped — the standard
FIVO choice, **biased**, and the bias does not vanish as ``K`` grows (on the
LGSSM with resampling at every step, about 3.5% of ``d log Z / dα`` at
K = 1000 and 10 000; with adaptive resampling and a good proposal it is below
the Monte Carlo error). With ``resampling_gradient="score"`` the exact
log-probability of every ancestor vector
(:func:`stackvi.handlers.resampling.log_prob`) is registered as a
score-function node, which makes the gradient unbiased when resampling happens
at every step (with ``ess_threshold < 1`` the resampling *decision* is a
discontinuous function of the weights and stays unaccounted for) — but its
variance grows with ``K·T`` (every draw's score is multiplied by the whole
objective); give it a ``baseline``.

Jit, vmap, cost: one ``lax.scan`` over time with the particles vectorized, so
cost is linear in ``T`` and ``K``; everything is jit-able and vmappable over
independent sequences. After a run, ``handler.results`` holds one
:class:`SMCResult` per scan (filtering particles and weights, ancestors, ESS);
read it inside the same trace (under ``jit``/``vmap`` its arrays are tracers),
or use :func:`smc_filter`, which returns it.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from numpyro.contrib.control_flow import scan
>>> def model(y):
...     def transition(x_prev, y_t):
...         x = numpyro.sample("x", dist.Normal(0.9 * x_prev, 1.0))
...         numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
...         return x, x
...     scan(transition, 0.0, y)
>>> y = jnp.array([0.3, -0.2, 1.1, 0.8])
>>> tr = numpyro.handlers.trace(numpyro.handlers.seed(
...     smc_marginalize(model, num_particles=100), 0)).get_trace(y)
>>> list(tr), tr["smc"]["fn"].log_prob(tr["smc"]["value"]).shape
(['smc'], ())
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import random
from numpyro.handlers import block, condition, seed, substitute, trace
from numpyro.ops.pytree import PytreeTrace
from numpyro.primitives import Messenger

from stackvi import baselines as _baselines
from stackvi.gradients.records import SiteRecord, current_recorder
from stackvi.handlers import resampling as _rs
from stackvi.handlers.smc_step import (
    check_carry,
    check_proposal,
    detach,
    factor_msg,
    lane_seed,
    latent,
    log_prob,
    per_step,
    trace_back,
)
from stackvi.terms import Term

__all__ = ["smc_marginalize", "smc_filter", "SMCResult"]


class SMCResult(NamedTuple):
    """What one particle filter run computed (``T`` steps, ``K`` particles)."""

    log_evidence: jax.Array  # log Ẑ, a scalar
    particles: Any  # the carry after each step's proposal, leaves [T, K, ...]
    log_weights: jax.Array  # [T, K] normalized filtering log-weights of ``particles``
    ancestors: jax.Array  # [T, K] indices into step t-1's particles used at step t
    ess: jax.Array  # [T] effective sample size of the filtering weights
    resampled: jax.Array  # [T] bool, whether step t resampled before proposing

    def filtered_mean(self) -> Any:
        """``E[carry_t | y_{1:t}]`` estimated by the weighted particles, leaves ``[T, ...]``."""
        w = jnp.exp(self.log_weights)

        def mean(leaf):
            return jnp.einsum("tk,tk...->t...", w, leaf)

        return jax.tree_util.tree_map(mean, self.particles)


class smc_marginalize(Messenger):
    """Replace each ``scan`` of the model by a particle filter; see the module docstring.

    ``proposal(carry, x)`` (optional) samples the transition's latent sites
    for one particle; it may have ``param`` sites (a learnable proposal).
    ``resampling``: ``'multinomial'``, ``'stratified'`` or ``'systematic'``;
    ``ess_threshold``: resample when ESS ≤ ``ess_threshold·K`` (1: every step,
    0: never); ``resampling_gradient``: ``'drop'`` (standard FIVO, biased) or
    ``'score'`` (unbiased); ``baseline`` (``None``, ``'ema'`` or a
    :class:`stackvi.baselines.Baseline`) for those score-function terms;
    ``name``: the site that carries ``log Ẑ``.
    """

    def __init__(
        self,
        fn: Callable | None = None,
        num_particles: int = 100,
        proposal: Callable | None = None,
        resampling: str = "systematic",
        ess_threshold: float = 1.0,
        resampling_gradient: str = "drop",
        baseline=None,
        name: str = "smc",
    ):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) \
                or num_particles < 1:
            raise ValueError(
                f"smc_marginalize: num_particles must be an int >= 1, got {num_particles!r}."
            )
        if not 0.0 <= ess_threshold <= 1.0:
            raise ValueError(f"smc_marginalize: ess_threshold must be in [0, 1], got "
                             f"{ess_threshold} (a fraction of num_particles).")
        if resampling_gradient not in ("drop", "score"):
            raise ValueError(f"smc_marginalize: resampling_gradient must be 'drop' or 'score', "
                             f"got {resampling_gradient!r}.")
        if proposal is not None and not callable(proposal):
            raise ValueError("smc_marginalize: proposal must be a function (carry, x) -> None "
                             "that samples the transition's latent sites.")
        self.num_particles = num_particles
        self.proposal = proposal
        self.resampling = _check_scheme(resampling)
        self.ess_threshold = float(ess_threshold)
        self.resampling_gradient = resampling_gradient
        self.baseline = _baselines.resolve(baseline)
        self.name = name
        self.results: list[SMCResult] = []
        super().__init__(fn)

    # -- handler protocol
    def __enter__(self):
        self.results = []
        super().__enter__()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and not self.results:
            raise ValueError(
                "smc_marginalize: the model ran no numpyro.contrib.control_flow.scan, so there "
                "is nothing to marginalize. Write the sequential part with "
                "`from numpyro.contrib.control_flow import scan` (a Python loop or a bare "
                "jax.lax.scan is invisible to handlers), or drop smc_marginalize."
            )

    def process_message(self, msg):
        if msg["type"] == "control_flow" and msg["fn"].__name__ == "scan_wrapper":
            site = self.name if not self.results else f"{self.name}_{len(self.results)}"
            self.results.append(None)  # reserve the slot: names stay unique
            msg["fn"] = _FilterCall(self, site, len(self.results) - 1)

    # -- the filter
    def _filter(self, site, slot, f, init, xs, length=None, reverse=False, rng_key=None,
                substitute_stack=None, enum=False, history=1, first_available_dim=None):
        if rng_key is None:
            raise RuntimeError(
                "smc_marginalize: the scan has no random key; run the model under "
                "numpyro.handlers.seed (stackvi's objectives provide one)."
            )
        if reverse or enum:
            raise NotImplementedError(
                "smc_marginalize: scan(reverse=True) and enumerated scans are not supported; "
                "write the scan forward in time without enumeration."
            )
        if length is None:
            length = jnp.shape(jax.tree_util.tree_leaves(xs)[0])[0]
        K = self.num_particles
        subs = [(kind, m) for kind, m in (substitute_stack or []) if kind != "replay"]
        init = jax.tree_util.tree_map(jnp.asarray, init)
        x0 = jax.tree_util.tree_map(lambda v: v[0], xs)
        params = self._prefetch(f, init, x0)
        flags = {"score": False, "keys": 0, "direct": False}
        step = self._step_fn(site, f, subs, length, params, flags)
        out = jax.eval_shape(step, init, x0, random.PRNGKey(0), jnp.asarray(0))[0]
        # One random site per step (the common case) uses the particle's key as is.
        flags["direct"] = flags["keys"] <= 1
        check_carry(site, init, out)
        # Same dtypes in and out of every step (lax.scan insists), e.g. a Python 0.0 init.
        init = jax.tree_util.tree_map(lambda v, o: jnp.asarray(v, o.dtype), init, out)

        log_k = math.log(K)

        def body(state, inputs):
            carry, lw, log_z, score, anc_score = state
            i, x, key = inputs
            k_res, k_prop = random.split(key)
            # Resample (adaptively): Ẑ gains the mean weight of the epoch that ends here.
            if self.ess_threshold >= 1.0:
                do = jnp.asarray(True)
            else:
                do = _rs.ess(lw) <= self.ess_threshold * K
            drawn = _rs.resample(self.resampling, k_res, lw)
            a = jnp.where(do, drawn, jnp.arange(K))
            log_z = log_z + jnp.where(do, jax.nn.logsumexp(lw) - log_k, 0.0)
            if self.resampling_gradient == "score":
                anc_score = anc_score + jnp.where(
                    do, _rs.log_prob(self.resampling, lw, drawn), 0.0)
            lw = jnp.where(do, jnp.zeros_like(lw), lw)
            carry = jax.tree_util.tree_map(lambda v: v[a], carry)
            # Propagate and weight, one particle per vmap lane.
            new_carry, y, inc, s = jax.vmap(step, in_axes=(0, None, 0, None))(
                carry, x, random.split(k_prop, K), i)
            lw = lw + inc
            out = (new_carry, y, jax.nn.log_softmax(lw), a, _rs.ess(lw), do)
            return (new_carry, lw, log_z, score + jnp.sum(s), anc_score), out

        def run(init, xs, rng_key):
            keys = random.split(rng_key, length + 1)
            carry0 = jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (K, *v.shape)), init)
            zero = jnp.zeros(())
            state = (carry0, jnp.zeros(K), zero, zero, zero)
            (carry, lw, log_z, score, anc_score), (parts, ys, lws, anc, ess, did) = \
                jax.lax.scan(body, state, (jnp.arange(length), xs, keys[:-1]), length=length)
            log_z = log_z + jax.nn.logsumexp(lw) - log_k
            path = trace_back(keys[-1], lw, carry, ys, anc)
            return SMCResult(log_z, parts, lws, anc, ess, did), score, anc_score, path

        # Eager calls compile the whole filter once instead of dispatching op by op; under
        # an outer transformation the filter is traced inline (a nested jit costs there).
        traced = any(isinstance(v, jax.core.Tracer)
                     for v in jax.tree_util.tree_leaves((init, xs, rng_key, params)))
        result, score, anc_score, (path_carry, path_ys) = (run if traced else jax.jit(run))(
            init, xs, rng_key)
        log_z = result.log_evidence
        self._register_scores(site, score, anc_score, flags["score"])
        self.results[slot] = result

        return (jnp.asarray(length), rng_key, path_carry), (
            PytreeTrace({site: factor_msg(site, log_z)}), path_ys)

    def _step_fn(self, site, f, subs, length, params, flags):
        proposal = self.proposal

        def transition(i):
            fn = substitute(f, data=params)
            for kind, m in subs:
                wrap = condition if kind == "condition" else substitute
                key = "condition_fn" if kind == "condition" else "substitute_fn"
                fn = wrap(fn, **{key: per_step(m, i, length, site)})
            return fn

        def step(carry, x, key, i):
            seeder = lane_seed(key, flags)
            if proposal is None:
                with block(), detach(), trace() as tr, seeder:
                    new_carry, y = transition(i)(carry, x)
                inc = sum((log_prob(s) for s in tr.values()
                           if s["type"] == "sample" and s["is_observed"]), start=jnp.zeros(()))
                scored = [s for s in tr.values() if latent(s) and not s["fn"].has_rsample]
            else:
                with block(), detach(), trace() as qtr, seeder:
                    substitute(proposal, data=params)(carry, x)
                proposed = {n: s["value"] for n, s in qtr.items() if latent(s)}
                with block(), trace() as tr, seeder:
                    new_carry, y = substitute(transition(i), data=proposed)(carry, x)
                check_proposal(site, qtr, tr)
                log_p = sum((log_prob(s) for s in tr.values() if s["type"] == "sample"),
                            start=jnp.zeros(()))
                inc = log_p - sum((log_prob(qtr[n]) for n in proposed), start=jnp.zeros(()))
                scored = [qtr[n] for n in proposed if not qtr[n]["fn"].has_rsample]
            # Score of the non-pathwise samples: unscaled log-densities, as reinforce does.
            flags["score"] = flags["score"] or bool(scored)
            score = sum((log_prob({**s, "scale": None}) for s in scored), start=jnp.zeros(()))
            return new_carry, y, inc, score
        return step

    def _prefetch(self, f, init, x0) -> dict:
        """Resolve the ``param`` sites of the transition and proposal once, outside the loop.

        Only ``param`` messages reach the outer handlers (which create or substitute
        them at the outer level, so no tracer of the loop escapes); the samples of
        this dry run are dead code under jit.
        """
        params: dict = {}
        for fn in (f, self.proposal):
            if fn is None:
                continue
            with block(hide_fn=lambda m: m["type"] != "param"), trace() as tr:
                seed(fn, random.PRNGKey(0))(init, x0)
            params.update({n: s["value"] for n, s in tr.items() if s["type"] == "param"})
        return params

    def _register_scores(self, site, score, anc_score, has_latent_score: bool):
        rec = current_recorder()
        if rec is None:
            return
        # Score-function records (the filter's detached draws, its ancestor choices):
        # the reinforce rule, with the whole value as learning signal.
        if has_latent_score:
            rec.add(SiteRecord(f"{site}:latents", Term(f"{site}:latents", score, ()),
                               "reinforce", self.baseline))
        if self.resampling_gradient == "score":
            rec.add(SiteRecord(f"{site}:ancestors", Term(f"{site}:ancestors", anc_score, ()),
                               "reinforce", self.baseline))


class _FilterCall:
    """Stands in for numpyro's ``scan_wrapper`` in the control-flow message."""

    __name__ = "smc_filter"

    def __init__(self, handler: smc_marginalize, site: str, slot: int):
        self.handler, self.site, self.slot = handler, site, slot

    def __call__(self, f, init, xs, length=None, reverse=False, **kwargs):
        return self.handler._filter(self.site, self.slot, f, init, xs, length, reverse,
                                    **kwargs)


def _check_scheme(scheme: str) -> str:
    try:
        return _rs.check_scheme(scheme)
    except ValueError as e:
        raise ValueError(f"smc_marginalize: {e}") from None


def smc_filter(model: Callable, rng_key: jax.Array, *args, num_particles: int = 100,
               **kwargs) -> list[SMCResult]:
    """Run ``model`` once under :class:`smc_marginalize`; one :class:`SMCResult` per scan.

    Keyword arguments other than the handler's (``proposal``, ``resampling``,
    ``ess_threshold``, ``resampling_gradient``, ``baseline``, ``name``) go to the model.
    """
    opts = {k: kwargs.pop(k) for k in ("proposal", "resampling", "ess_threshold",
                                       "resampling_gradient", "baseline", "name")
            if k in kwargs}
    with smc_marginalize(num_particles=num_particles, **opts) as handler:
        seed(model, rng_key)(*args, **kwargs)
    return handler.results
