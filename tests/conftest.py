"""Shared fixtures: keys, the Normal–Normal model (DESIGN.md §7) and the REBAR toy.

Statistical checks use :func:`assert_unbiased`: draw ``N`` independent keys
from a fixed seed, compute the estimator once per key (:func:`per_key`: vmapped
and jitted), and require, elementwise,

    |mean − exact| ≤ 4 · σ̂ / √N        (σ̂ measured from the same samples).

Why 4: by the central limit theorem (mean − exact)/(σ̂/√N) is ~N(0, 1) for an
unbiased estimator, so a check fails by chance with probability ≈ 6e-5; over
the few hundred such checks in the suite a false alarm is unlikely (< 2%),
while any bias larger than 4 standard errors is caught. The keys (and the
hypothesis draws, derandomized) are fixed, so every run gives the same verdict.

Variance comparisons (:func:`assert_lower_variance`) compare log-variances with
a margin of 4 standard errors of their difference, also measured from the
samples (Var(s²) ≈ (μ₄ − σ⁴)/N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

from stackvi.estimators import Objective
from stackvi.handlers import simulate
from stackvi.terms import Term, Terms

Z_SIGMAS = 4.0


def keys(n: int, seed: int = 0) -> jax.Array:
    """``n`` independent keys from a fixed seed."""
    return jax.random.split(jax.random.PRNGKey(seed), n)


_PER_KEY: dict = {}


def per_key(obj: Objective, params, n: int, *args, seed: int = 0, state=None):
    """``(values, grads)`` of ``obj.value_and_grad`` at ``n`` fixed keys (vmapped, jitted).

    The compiled function is cached per objective and takes ``params`` (and the
    baseline ``state``) as arguments, so hypothesis examples reuse one compilation.
    """
    entry = _PER_KEY.get(id(obj))
    if entry is None or entry[0] is not obj:

        def run(params, state, ks, *args):
            if state is None:
                return jax.vmap(lambda k: obj.value_and_grad(params, k, *args))(ks)
            return jax.vmap(
                lambda k: obj.value_and_grad_with_state(params, state, k, *args)[:2])(ks)

        entry = _PER_KEY[id(obj)] = (obj, jax.jit(run))
    return entry[1](params, state, keys(n, seed), *args)


def assert_unbiased(samples, exact, what: str = "estimate", z: float = Z_SIGMAS) -> None:
    """z-test of the sample mean against ``exact`` with σ̂ from the samples (elementwise)."""
    samples = np.asarray(samples, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    n = samples.shape[0]
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / math.sqrt(n)
    ok = np.abs(mean - exact) <= z * se + 1e-6 * (1 + np.abs(exact))  # float32 rounding
    assert np.all(ok), (
        f"{what}: mean {mean} vs exact {exact}: |diff| = {np.abs(mean - exact)} > "
        f"{z}·σ̂/√N = {z * se} (N = {n})"
    )


def log_variance_se(samples) -> tuple[float, float]:
    """``(log s², its standard error)``: Var(s²) ≈ (μ₄ − σ⁴)/N, delta method for the log."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    c = x - x.mean()
    var = np.mean(c**2)
    m4 = np.mean(c**4)
    return math.log(var), math.sqrt(max(m4 / var**2 - 1.0, 0.0) / n)


def assert_lower_variance(low, high, what: str = "variance", z: float = Z_SIGMAS) -> float:
    """``Var(low) < Var(high)`` by more than ``z`` standard errors of the log-variance ratio.

    Returns the measured ratio ``Var(high) / Var(low)``.
    """
    lv_low, se_low = log_variance_se(low)
    lv_high, se_high = log_variance_se(high)
    margin = z * math.hypot(se_low, se_high)
    assert lv_high - lv_low > margin, (
        f"{what}: log Var ratio {lv_high - lv_low:.3f} not above its sampling margin "
        f"{margin:.3f} (Var {math.exp(lv_low):.3g} vs {math.exp(lv_high):.3g})"
    )
    return math.exp(lv_high - lv_low)


# --------------------------------------------------------------------------- Normal–Normal


@dataclass(frozen=True)
class NormalNormal:
    """z ~ N(μ0, s0²), x_i | z ~ N(z, s²); guide N(m, v²) with params ``m``, ``v`` (positive)."""

    mu0: float = 0.3
    s0: float = 1.5
    s: float = 0.8
    x: tuple = (0.5, 1.7, -0.2, 1.1)

    @property
    def data(self) -> jax.Array:
        return jnp.asarray(self.x, dtype=jnp.float32)

    def model(self, x):
        z = numpyro.sample("z", dist.Normal(self.mu0, self.s0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, self.s), obs=x)

    def guide(self, x, m0: float = 0.0, v0: float = 1.0):
        m = numpyro.param("m", m0)
        v = numpyro.param("v", v0, constraint=constraints.positive)
        numpyro.sample("z", dist.Normal(m, v))

    def params(self, m: float, v: float) -> dict:
        """Unconstrained params (the optimizer's space) for guide N(m, v²)."""
        return {"m": jnp.asarray(m, jnp.float32), "v": jnp.log(jnp.asarray(v, jnp.float32))}

    # closed forms, DESIGN.md §7
    def elbo(self, m: float, v: float) -> float:
        x = np.asarray(self.x, np.float64)
        n = x.size

        def log_n(y, mu, sd):
            return -0.5 * np.log(2 * np.pi * sd**2) - (y - mu) ** 2 / (2 * sd**2)

        return float(
            log_n(m, self.mu0, self.s0) - v**2 / (2 * self.s0**2)
            + np.sum(log_n(x, m, self.s)) - n * v**2 / (2 * self.s**2)
            + 0.5 * np.log(2 * np.pi * np.e * v**2)
        )

    def grad_m(self, m: float, v: float) -> float:
        x = np.asarray(self.x, np.float64)
        return float(-(m - self.mu0) / self.s0**2 + np.sum(x - m) / self.s**2)

    def grad_v(self, m: float, v: float) -> float:
        n = len(self.x)
        return float(-v / self.s0**2 - n * v / self.s**2 + 1 / v)

    def grad_log_v(self, m: float, v: float) -> float:
        """Gradient w.r.t. the unconstrained param ``log v`` (chain rule: ·v)."""
        return self.grad_v(m, v) * v

    @property
    def posterior(self) -> tuple[float, float]:
        """Exact posterior ``(mean, std)`` of z."""
        n = len(self.x)
        prec = 1 / self.s0**2 + n / self.s**2
        mean = (self.mu0 / self.s0**2 + sum(self.x) / self.s**2) / prec
        return mean, prec**-0.5

    @property
    def log_evidence(self) -> float:
        m, sd = self.posterior
        return self.elbo(m, sd)  # the ELBO at the exact posterior is log p(x)


@pytest.fixture
def normal_normal() -> NormalNormal:
    return NormalNormal()


# --------------------------------------------------------------------------- REBAR toy


@dataclass(frozen=True)
class RebarToy:
    """b ~ Bern(σ(η)); the objective is −E[(b − t)²] (maximized), t = 0.499."""

    t: float = 0.499

    def guide(self, eta0: float = 0.0):
        eta = numpyro.param("eta", eta0)
        # probs=σ(η), not logits=η: NumPyro's Bernoulli(logits).log_prob has a wrong
        # gradient at logits == 0 exactly under this JAX (|x|' = 1 at 0), and η = 0 is
        # the toy's standard point.
        numpyro.sample("b", dist.Bernoulli(probs=jax.nn.sigmoid(eta)))

    def objective(self, guide=None) -> Objective:
        guide = guide or self.guide

        def program():
            b = simulate(guide)["b"]["value"]
            return Terms((Term("cost", -((b - self.t) ** 2), ()),))

        return Objective(program, guide, guide, name="rebar")

    def grad(self, eta: float) -> float:
        """d/dη of −E[(b − t)²] = −σ(η)(1 − σ(η))(1 − 2t)."""
        p = 1 / (1 + math.exp(-eta))
        return -p * (1 - p) * (1 - 2 * self.t)

    def value(self, eta: float) -> float:
        p = 1 / (1 + math.exp(-eta))
        return -(p * (1 - self.t) ** 2 + (1 - p) * self.t**2)


@pytest.fixture
def rebar() -> RebarToy:
    return RebarToy()


@pytest.fixture
def key() -> jax.Array:
    return jax.random.PRNGKey(0)
