"""Pathwise gradients through NumPyro's implicitly reparameterized samplers are exact.

Gamma, Beta, Dirichlet and Student-t draw through ``reparam`` (their default,
``has_rsample``); the gradient of ``E[cost(x)]`` with a closed form is
checked unbiased at fixed keys (conftest's ``k·σ̂/√N``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi.estimators import Objective
from stackvi.handlers import reparam, simulate
from stackvi.terms import Term, Terms
from tests.conftest import assert_unbiased, per_key

W = jnp.array([1.0, -0.5, 2.0])


def _gamma_m2(p):  # E[x²] under Gamma(α, β) = α(α + 1)/β²
    return p["a"] * (p["a"] + 1) / p["b"] ** 2


def _beta_m2(p):  # E[x²] under Beta(a, b) = a(a + 1)/((a + b)(a + b + 1))
    s = p["a"] + p["b"]
    return p["a"] * (p["a"] + 1) / (s * (s + 1))


def _dirichlet_wm2(p):  # Σ w_i E[x_i²], E[x_i²] = α_i(α_i + 1)/(α₀(α₀ + 1))
    a0 = jnp.sum(p["a"])
    return jnp.sum(W * p["a"] * (p["a"] + 1) / (a0 * (a0 + 1)))


def _student_m2(p):  # E[x²] under StudentT(ν, μ, σ) = σ² ν/(ν − 2) + μ² (ν > 2)
    return p["s"] ** 2 * p["nu"] / (p["nu"] - 2) + p["m"] ** 2


CASES = {
    "gamma": (lambda p: dist.Gamma(p["a"], p["b"]), lambda x: x**2, _gamma_m2,
              {"a": 1.7, "b": 2.3}),
    "beta": (lambda p: dist.Beta(p["a"], p["b"]), lambda x: x**2, _beta_m2,
             {"a": 0.8, "b": 2.5}),
    "dirichlet": (lambda p: dist.Dirichlet(p["a"]), lambda x: jnp.sum(W * x**2, -1),
                  _dirichlet_wm2, {"a": [0.7, 1.5, 3.0]}),
    "student_t": (lambda p: dist.StudentT(p["nu"], p["m"], p["s"]), lambda x: x**2, _student_m2,
                  {"nu": 7.0, "m": 0.4, "s": 1.3}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow
def test_reparam_exact(case):
    make, cost, closed, init = CASES[case]
    params = {k: jnp.asarray(v, jnp.float32) for k, v in init.items()}

    def guide():
        p = {k: numpyro.param(k, v) for k, v in params.items()}
        numpyro.sample("x", make(p))

    def program():
        x = simulate(reparam(guide))["x"]["value"]
        return Terms((Term("cost", cost(x), ()),))

    obj = Objective(program, guide, guide, name=f"E[cost] under {case}")
    values, grads = per_key(obj, params, 10000)
    assert_unbiased(values, closed(params), f"{case} E[cost]")
    exact = jax.grad(closed)(params)
    for k in params:
        assert_unbiased(grads[k], exact[k], f"{case} d/d{k}")
