"""The noisy cone (DESIGN.md §7; PLDI 2024 §7): a posterior on a thin ring.

Model: ``x, y ~ N(0, 10)`` (std), ``z ~ N(x² + y², 0.1 + (x² + y²)/100)`` (std),
``z = 5`` observed. The posterior concentrates on the circle ``x² + y² ≈ 5``;
the exact ``log p(z = 5) = −5.32323`` (:data:`LOG_EVIDENCE`) is a 1-D integral
over ``s = x² + y² ~ Exponential(mean 200)`` (:func:`exact_log_evidence`).

Guides:

* :func:`mean_field_guide` — independent Normals on ``x`` and ``y``;
* :func:`expressive_guide` — ``u ~ Uniform(0, 1)``, ``θ = 2πu``,
  ``x ~ N(√5 cos θ, σ₁)``, ``y ~ N(√5 sin θ, σ₂)``: a ring, whose density
  over ``(x, y)`` needs ``u`` integrated out — use it through
  :func:`stackvi.marginal.marginal` with ``aux=["u"]`` and the learnable
  :func:`reverse` model ``r(u | x, y)``, a wrapped Normal around the angle
  ``atan2(y, x) / 2π`` (:class:`WrappedNormal01`).

>>> import jax, stackvi as sv
>>> obj = sv.estimators.iwhvi(model, expressive_guide, reverse, aux=["u"], num_aux=5)
>>> sorted(obj.init(jax.random.PRNGKey(0)))
['reverse_log_scale', 'reverse_slope', 'sigma1', 'sigma2']
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

from stackvi import estimators
from stackvi.estimators.core import Objective

__all__ = [
    "LOG_EVIDENCE",
    "OBSERVED",
    "model",
    "mean_field_guide",
    "expressive_guide",
    "reverse",
    "WrappedNormal01",
    "exact_log_evidence",
    "objectives",
    "bound",
]

OBSERVED = 5.0
LOG_EVIDENCE = -5.32323
RADIUS = math.sqrt(5.0)


def model(z: float = OBSERVED):
    x = numpyro.sample("x", dist.Normal(0.0, 10.0))
    y = numpyro.sample("y", dist.Normal(0.0, 10.0))
    r2 = x**2 + y**2
    numpyro.sample("z", dist.Normal(r2, 0.1 + r2 / 100.0), obs=z)


def mean_field_guide(z: float = OBSERVED):
    pos = constraints.positive
    # Started on the x-axis: there the ring's tangent is a coordinate axis, the
    # best an axis-aligned Gaussian can do (from a diagonal start it stalls).
    mx, my = numpyro.param("mf_loc_x", 2.0), numpyro.param("mf_loc_y", 0.0)
    sx = numpyro.param("mf_scale_x", 1.0, constraint=pos)
    sy = numpyro.param("mf_scale_y", 1.0, constraint=pos)
    numpyro.sample("x", dist.Normal(mx, sx))
    numpyro.sample("y", dist.Normal(my, sy))


def expressive_guide(z: float = OBSERVED):
    s1 = numpyro.param("sigma1", 0.5, constraint=constraints.positive)
    s2 = numpyro.param("sigma2", 0.5, constraint=constraints.positive)
    u = numpyro.sample("u", dist.Uniform(0.0, 1.0))
    theta = 2 * jnp.pi * u
    numpyro.sample("x", dist.Normal(RADIUS * jnp.cos(theta), s1))
    numpyro.sample("y", dist.Normal(RADIUS * jnp.sin(theta), s2))


class WrappedNormal01(dist.Distribution):
    """``(loc + scale·ε) mod 1`` on ``[0, 1)``: a Normal wrapped around the unit circle.

    Reparameterized; its density sums the Normal over 9 windings, exact to
    float precision for ``scale ≤ 1``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval
    reparametrized_params = ["loc", "scale"]

    def __init__(self, loc, scale, *, validate_args=None):
        self.loc, self.scale = promote_shapes(loc, scale)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(scale))
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eps = random.normal(key, sample_shape + self.batch_shape)
        return jnp.mod(self.loc + self.scale * eps, 1.0)

    def log_prob(self, value):
        windings = jnp.arange(-4.0, 5.0)
        lp = dist.Normal(self.loc[..., None], self.scale[..., None]).log_prob(
            value[..., None] + windings)
        return jax.nn.logsumexp(lp, axis=-1)


def reverse(values: dict, z: float = OBSERVED):
    """``r(u | x, y)``: wrapped Normal at the angle of ``(x, y)``, scale ∝ radius^slope."""
    x, y = values["x"], values["y"]
    loc = jnp.arctan2(y, x) / (2 * jnp.pi)
    log_radius = 0.5 * jnp.log(x**2 + y**2 + 1e-12)
    log_scale = numpyro.param("reverse_log_scale", -2.0) + \
        numpyro.param("reverse_slope", 0.0) * (log_radius - math.log(RADIUS))
    numpyro.sample("u", WrappedNormal01(loc, jnp.exp(log_scale)))


def exact_log_evidence(z: float = OBSERVED) -> float:
    """``log p(z)`` by 1-D quadrature over ``s = x² + y² ~ Exponential(mean 200)`` (scipy)."""
    import numpy as np
    from scipy import integrate, stats

    def f(s):
        return np.exp(-s / 200.0) / 200.0 * stats.norm.pdf(z, s, 0.1 + s / 100.0)

    # split at the peak so the adaptive rule sees it
    head = integrate.quad(f, 0.0, 10 * z, points=[z], limit=200)[0]
    tail = integrate.quad(f, 10 * z, np.inf, limit=200)[0]
    return float(np.log(head + tail))


def objectives(num_particles: int = 5, num_aux: int = 5) -> dict[str, Objective]:
    """The five bounds of the cone table, by row label."""
    e, aux = estimators, ["u"]
    return {
        "ELBO (mean-field)": e.elbo(model, mean_field_guide),
        f"IWELBO (K={num_particles}, mean-field)": e.iwae(model, mean_field_guide,
                                                          num_particles),
        "HVI": e.hvi(model, expressive_guide, reverse, aux),
        f"IWHVI (m={num_aux})": e.iwhvi(model, expressive_guide, reverse, aux, num_aux),
        f"DIWHVI (n={num_particles}, m={num_aux})": e.diwhvi(
            model, expressive_guide, reverse, aux, num_particles, num_aux),
    }


def bound(obj: Objective, raw_params: dict, rng_key: jax.Array,
          num_samples: int = 10_000) -> tuple[float, float]:
    """``(mean, standard error)`` of ``num_samples`` independent estimates of ``obj``."""
    keys = random.split(rng_key, num_samples)
    est = jax.jit(jax.vmap(lambda k: obj.estimate(raw_params, k)))(keys)
    est = jax.device_get(est)
    return float(est.mean()), float(est.std(ddof=1) / math.sqrt(num_samples))
