"""Resampling schemes for particle filters, and the log-probability of their draws.

A scheme maps ``(key, log_weights)`` (``K`` unnormalized log-weights) to ``K``
ancestor indices such that ``E[#{k: a_k = j}] = K · w̄_j`` (every scheme here
is unbiased, so SMC's evidence estimate stays unbiased). All three are inverse
CDF transforms of ``K`` uniforms, O(K log K) by binary search (a categorical
draw by Gumbel-max would be O(K²)):

* ``multinomial`` — ``K`` independent uniforms;
* ``stratified`` — one uniform in each stratum ``[k/K, (k+1)/K)``;
* ``systematic`` — one uniform ``U``, the points ``(k + U)/K``.

``log_prob(scheme, log_weights, ancestors)`` is the exact log-probability of a
whole ancestor vector under the scheme, differentiable in the weights; it is
the score term that makes gradients through resampling unbiased. For
multinomial it is ``Σ_k log w̄_{a_k}``; for stratified, stratum ``k`` puts mass
``K·|[k/K, (k+1)/K) ∩ [C_{j−1}, C_j)|`` on ancestor ``j`` (``C`` the cumulative
weights); for systematic, the vector ``a`` has the mass of the set of ``U``
that produces all of it at once, an interval.

>>> import jax, jax.numpy as jnp
>>> lw = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
>>> a = resample("systematic", jax.random.PRNGKey(0), lw)
>>> a.shape, bool(jnp.all((a >= 0) & (a < 4)))
((4,), True)
>>> round(float(log_prob("multinomial", lw, jnp.array([3, 3, 2, 1]))), 4)  # log .4·.4·.3·.2
-4.646
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import random

__all__ = ["SCHEMES", "resample", "log_prob", "ess"]

SCHEMES = ("multinomial", "stratified", "systematic")

# A draw's interval can shrink to zero by float rounding; never take log(0) or log(<0).
_TINY = 1e-30


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown resampling scheme {scheme!r}; use one of {SCHEMES}")
    return scheme


def _uniforms(scheme: str, key: jax.Array, k: int, dtype) -> jax.Array:
    grid = jnp.arange(k, dtype=dtype)
    if scheme == "multinomial":
        return random.uniform(key, (k,), dtype)
    if scheme == "stratified":
        return (grid + random.uniform(key, (k,), dtype)) / k
    return (grid + random.uniform(key, (), dtype)) / k


def _cdf(log_weights: jax.Array) -> jax.Array:
    return jnp.cumsum(jax.nn.softmax(log_weights))


def resample(scheme: str, key: jax.Array, log_weights: jax.Array,
             num: int | None = None) -> jax.Array:
    """``num`` (default ``K``) ancestor indices drawn by ``scheme`` from the normalized weights."""
    check_scheme(scheme)
    k = log_weights.shape[-1]
    num = k if num is None else num
    cdf = _cdf(jax.lax.stop_gradient(log_weights))
    u = _uniforms(scheme, key, num, cdf.dtype)
    # side="right": u in [C_{j-1}, C_j) picks j; the clip covers cdf[-1] < 1 by rounding.
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), k - 1)


def log_prob(scheme: str, log_weights: jax.Array, ancestors: jax.Array) -> jax.Array:
    """Log-probability of the whole ancestor vector under ``scheme`` (a scalar)."""
    check_scheme(scheme)
    k = log_weights.shape[-1]
    if scheme == "multinomial":
        return jnp.sum(jax.nn.log_softmax(log_weights)[ancestors])
    cdf = _cdf(log_weights)
    upper = cdf[ancestors]
    lower = jnp.where(ancestors > 0, cdf[jnp.maximum(ancestors - 1, 0)], 0.0)
    left = jnp.arange(k, dtype=cdf.dtype) / k
    if scheme == "stratified":
        width = jnp.minimum(upper, left + 1.0 / k) - jnp.maximum(lower, left)
        return jnp.sum(jnp.log(jnp.maximum(k * width, _TINY)))
    # systematic: U in [lower_k - k/K, upper_k - k/K) for every k, and U in [0, 1/K).
    hi = jnp.minimum(jnp.min(upper - left), 1.0 / k)
    lo = jnp.maximum(jnp.max(lower - left), 0.0)
    return jnp.log(jnp.maximum(k * (hi - lo), _TINY))


def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size ``1 / Σ w̄²`` of unnormalized log-weights (last axis)."""
    return jnp.exp(-jax.nn.logsumexp(2.0 * jax.nn.log_softmax(log_weights), axis=-1))
