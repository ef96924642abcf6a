"""Approximate marginalization and normalization: ``marginal`` and ``normalize``.

``marginal(guide, reverse, aux, num_particles=K)`` turns a hierarchical guide
``q(z, u)`` into a guide over ``z`` alone, with the auxiliary sites ``u``
integrated out approximately by importance sampling from a (learnable)
*reverse model* ``r(u | z)``:

* **sampling** (running it as a guide) draws ``(z, u₁) ~ q`` and reports the
  reciprocal estimate ``q̂(z) = 1/K Σₖ q(z, uₖ) / r(uₖ | z)`` with the sampled
  ``u₁`` kept as one of the K particles and ``u₂..u_K ~ r(· | z)``. Then
  ``E[1 / q̂(z) | z] = 1 / q(z)``, so ``E[log q̂(z)] ≥ log q(z)`` and any ELBO
  or IWAE over the marginal stays a lower bound on ``log p(x)``: that is HVI
  (K = 1), IWHVI (K > 1) and DIWHVI (IWAE over it), see
  :mod:`stackvi.estimators.hvi`.
* **scoring** a given ``z`` (:meth:`Marginal.log_density`) draws all K
  ``uₖ ~ r(· | z)``: ``q̂(z)`` is then an unbiased estimate of ``q(z)``.

As a guide it emits each kept site ``z`` as a pathwise ``Delta`` sample site
(so the model is replayed on it) and one factor site ``name`` holding
``log q̂(z)``, which is part of the guide's density. To score a *given* value
inside a program (e.g. a model with a nuisance latent integrated out), call
:meth:`Marginal.score`, which emits the factor with the unbiased estimate;
running the guide form under ``replay``/``substitute`` of its kept sites does
not rescore them. The inner guide's and
the reverse model's own sites are hidden from outer handlers; put strategy
handlers (``reinforce(guide, sites=["u"])`` ...) on the inner guide and on
``reverse`` themselves — they are honoured there, and their score-function
nodes join the enclosing objective's.

``reverse(values, *args, **kwargs)`` receives the kept sites' values as a
dict and must sample exactly the ``aux`` sites, under the same names.

``normalize(model, guide, K)`` is self-normalized importance sampling (SIR):
K detached guide proposals with their log-weights, an approximate posterior
that reweighted wake-sleep (:mod:`stackvi.estimators.rws`) averages over.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> def guide():                       # q(z) = N(0, √2) once u is integrated out
...     u = numpyro.sample("u", dist.Normal(0.0, 1.0))
...     numpyro.sample("z", dist.Normal(u, 1.0))
>>> def reverse(values):               # the exact q(u | z) = N(z/2, 1/√2)
...     numpyro.sample("u", dist.Normal(values["z"] / 2, 0.5 ** 0.5))
>>> q = marginal(guide, reverse, aux=["u"], num_particles=3)
>>> lq = numpyro.handlers.seed(q.log_density, 0)({"z": jnp.array(1.0)})
>>> round(float(lq), 4), round(float(dist.Normal(0.0, 2 ** 0.5).log_prob(1.0)), 4)
(-1.5155, -1.5155)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro.handlers import block, seed, substitute, trace

from stackvi.estimators.core import particles
from stackvi.gradients.scoring import model_density
from stackvi.gradients.strategy import simulate
from stackvi.handlers.density import trace_terms
from stackvi.handlers.stop import stop_samples

__all__ = ["Marginal", "marginal", "Normalized", "normalize"]


def _is_sample(msg: dict) -> bool:
    return msg["type"] == "sample"


def _latent_names(tr: dict) -> list[str]:
    return [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class Marginal:
    """A guide over the non-auxiliary sites of ``guide``; see the module docstring."""

    def __init__(self, guide: Callable, reverse: Callable, aux: Iterable[str],
                 num_particles: int = 1, name: str = "marginal"):
        aux = [aux] if isinstance(aux, str) else list(aux)
        if not aux:
            raise ValueError("marginal: name at least one auxiliary site in aux=[...].")
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(
                f"marginal: num_particles must be a positive int (K = 1 is HVI's single "
                f"sample), got {num_particles!r}."
            )
        self.guide, self.reverse, self.aux = guide, reverse, tuple(aux)
        self.num_particles, self.name = num_particles, name

    def __repr__(self):
        return (f"marginal({_fn_name(self.guide)}, {_fn_name(self.reverse)}, aux={list(self.aux)},"
                f" num_particles={self.num_particles})")

    # -- pieces (all need a seed in context when they sample)
    def _key(self, what: str):
        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError(f"{self!r}: {what} needs a random key; run it under "
                               "numpyro.handlers.seed (objectives provide one).")
        return key

    def _sample_joint(self, args, kwargs) -> dict:
        """Run the inner guide under its strategies, hidden from outer handlers."""
        key = self._key("sampling")
        # block hides the inner sample sites from outer handlers (so our own
        # seed must sit inside it); params still reach the outer substitution.
        with block(hide_fn=_is_sample):
            tr = simulate(seed(self.guide, key), *args, **kwargs)
        latent = _latent_names(tr)
        missing = [a for a in self.aux if a not in latent]
        if missing:
            raise ValueError(
                f"{self!r}: auxiliary site '{missing[0]}' is not sampled by the guide "
                f"'{_fn_name(self.guide)}' (its latent sites: {latent}). Name existing guide "
                "sites in aux=[...]."
            )
        if len(latent) == len(self.aux):
            raise ValueError(f"{self!r}: every latent site of the guide is auxiliary; "
                             "nothing would be left to sample.")
        return tr

    def _log_joint(self, values: dict, args, kwargs) -> jax.Array:
        """``log q(z, u)`` of the inner guide at fully given values."""
        with block(hide_fn=_is_sample):
            tr = trace(substitute(self.guide, data=values)).get_trace(*args, **kwargs)
        return trace_terms(tr).total()

    def _check_reverse(self, tr: dict) -> None:
        latent = _latent_names(tr)
        if sorted(latent) != sorted(self.aux):
            raise ValueError(
                f"{self!r}: the reverse model '{_fn_name(self.reverse)}' must sample exactly "
                f"the auxiliary sites {list(self.aux)}, but it samples {latent}."
            )

    def _log_reverse(self, values: dict, aux_values: dict, args, kwargs) -> jax.Array:
        """``log r(u | z)`` at given ``u``."""
        with block(hide_fn=_is_sample):
            tr = trace(substitute(self.reverse, data=aux_values)).get_trace(values, *args,
                                                                           **kwargs)
        self._check_reverse(tr)
        return trace_terms(tr).total()

    def _proposal_log_weights(self, values: dict, num: int, args, kwargs) -> jax.Array:
        """``num`` log-weights ``log q(z, uₖ) − log r(uₖ | z)`` with ``uₖ ~ r(· | z)``."""

        def one():
            key = self._key("proposing auxiliaries")
            with block(hide_fn=_is_sample):
                tr = simulate(seed(self.reverse, key), values, *args, **kwargs)
            self._check_reverse(tr)
            aux_values = {a: tr[a]["value"] for a in self.aux}
            return self._log_joint({**values, **aux_values}, args, kwargs) - \
                trace_terms(tr).total()

        return particles(one, num, axis=f"{self.name}:aux")()

    # -- public estimators
    def log_density(self, values: dict, *args, **kwargs) -> jax.Array:
        """``log q̂(z)`` with ``E[q̂(z)] = q(z)``: K auxiliaries drawn from ``reverse``."""
        lw = self._proposal_log_weights(dict(values), self.num_particles, args, kwargs)
        return jax.nn.logsumexp(lw) - jnp.log(self.num_particles)

    def reciprocal_log_density(self, values: dict, aux_values: dict, *args,
                               **kwargs) -> jax.Array:
        """``log q̂(z)`` with ``E[1/q̂(z)] = 1/q(z)`` when ``aux_values ~ q(u | z)``.

        ``aux_values`` is kept as one particle, the other K − 1 come from ``reverse``.
        """
        values = dict(values)
        lw1 = self._log_joint({**values, **aux_values}, args, kwargs) - \
            self._log_reverse(values, aux_values, args, kwargs)
        return self._combine(lw1, values, args, kwargs)

    def _combine(self, lw1, values, args, kwargs):
        if self.num_particles == 1:
            return lw1
        rest = self._proposal_log_weights(values, self.num_particles - 1, args, kwargs)
        lw = jnp.concatenate([jnp.reshape(lw1, (1,)), rest])
        return jax.nn.logsumexp(lw) - jnp.log(self.num_particles)

    def sample_with_log_density(self, *args, **kwargs) -> tuple[dict, jax.Array]:
        """``(values, log q̂)``: a sample of the kept sites and its reciprocal estimate."""
        tr = self._sample_joint(args, kwargs)
        values = {n: tr[n]["value"] for n in _latent_names(tr) if n not in self.aux}
        aux_values = {a: tr[a]["value"] for a in self.aux}
        # log q(z, u₁) comes from the sampled trace itself (no second guide run).
        lw1 = trace_terms(tr).total() - self._log_reverse(values, aux_values, args, kwargs)
        return values, self._combine(lw1, values, args, kwargs)

    def score(self, values: dict, *args, **kwargs) -> jax.Array:
        """Emit the factor ``name`` = ``log q̂(values)`` (unbiased estimate) and return it."""
        log_q = self.log_density(values, *args, **kwargs)
        numpyro.factor(self.name, log_q)
        return log_q

    def __call__(self, *args, **kwargs) -> dict:
        """Run as a guide: emit the kept sites and the factor ``name`` = ``log q̂``."""
        values, log_q = self.sample_with_log_density(*args, **kwargs)
        for n, v in values.items():
            # Pathwise: the value already carries whatever gradient its strategy gave it.
            numpyro.sample(n, dist.Delta(v, event_dim=jnp.ndim(v)),
                           infer={"strategy": "reparam"})
        numpyro.factor(self.name, log_q)
        return values


def marginal(guide: Callable, reverse: Callable, aux: Iterable[str], num_particles: int = 1,
             name: str = "marginal") -> Marginal:
    """``guide`` with its ``aux`` sites integrated out by K-sample importance sampling."""
    return Marginal(guide, reverse, aux, num_particles, name)


# --------------------------------------------------------------------------- normalize / SIR


class Normalized(NamedTuple):
    """K weighted proposals: an approximate posterior (self-normalized importance sampling).

    ``values`` maps each latent site to its K proposals (leading axis K,
    detached); ``log_p`` (model, differentiable in the model's params) and
    ``log_q`` (guide, differentiable in the guide's params) are length K.
    """

    values: dict
    log_p: jax.Array
    log_q: jax.Array

    @property
    def log_weights(self) -> jax.Array:
        return self.log_p - self.log_q

    @property
    def weights(self) -> jax.Array:
        """Normalized weights (no gradient: they weigh, they are not differentiated)."""
        return jax.nn.softmax(jax.lax.stop_gradient(self.log_weights))

    @property
    def log_evidence(self) -> jax.Array:
        """``log 1/K Σ wₖ``: the IWAE estimate of ``log p(x)``."""
        return jax.nn.logsumexp(self.log_weights) - jnp.log(self.log_weights.shape[0])

    def expect(self, f: jax.Array) -> jax.Array:
        """``Σₖ w̄ₖ f[k]`` for per-proposal values ``f`` (leading axis K)."""
        w = self.weights
        return jnp.tensordot(w, f, axes=1)

    def sample(self, rng_key: jax.Array) -> dict:
        """One resampled proposal (sampling importance resampling)."""
        i = random.categorical(rng_key, jnp.log(self.weights))
        return {n: v[i] for n, v in self.values.items()}


def normalize(model: Callable, guide: Callable, num_particles: int) -> Callable[..., Normalized]:
    """``(*args) -> Normalized``: ``num_particles`` guide proposals weighted by ``p / q``.

    Needs a seed in context (objectives provide one).

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model():
    ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)
    >>> def guide():
    ...     numpyro.sample("z", dist.Normal(0.0, 2.0))
    >>> post = numpyro.handlers.seed(normalize(model, guide, 4000), 0)()
    >>> round(float(post.expect(post.values["z"])), 1)     # posterior mean 1/2
    0.5
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"normalize: num_particles must be a positive int, got {num_particles!r}")

    def one(*args, **kwargs):
        with stop_samples():
            guide_trace = trace(guide).get_trace(*args, **kwargs)
        # model_density: discrete model latents the guide does not sample are summed out
        log_p = model_density(model, guide_trace, *args, **kwargs).total()
        values = {n: guide_trace[n]["value"] for n in _latent_names(guide_trace)}
        return (values, log_p, trace_terms(guide_trace).total())

    def run(*args, **kwargs) -> Normalized:
        return Normalized(*particles(one, num_particles)(*args, **kwargs))

    return run
