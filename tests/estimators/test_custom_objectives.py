"""The user-written objectives of ``docs/objectives.md``, executed from the page itself.

Every ``python`` block of the page runs, in order, in one namespace; the
three objectives it defines are then checked like built-ins: against the
built-in they re-derive, exact answers and closed forms, under pathwise and
score-function strategies.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators
from stackvi.handlers import reinforce
from tests.conftest import assert_unbiased, keys
from tests.estimators.test_objectives import PARAMS, dguide, dmodel, exact_expectation

PAGE = Path(__file__).resolve().parents[2] / "docs" / "objectives.md"


@pytest.fixture(scope="module")
def page() -> dict:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 4, "docs/objectives.md lost its code blocks"
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), ns)
    for name in ("iwae_from_scratch", "neg_cubo", "kl_reward"):
        src = next(b for b in blocks if f"def {name}(" in b)
        assert len(src.strip().splitlines()) <= 15, f"{name} is meant to be a short program"
    return ns


def test_iwae_from_scratch_is_the_builtin(page, normal_normal):
    nn = normal_normal
    mine = page["iwae_from_scratch"](nn.model, nn.guide, 5)
    ref = estimators.iwae(nn.model, nn.guide, 5)
    params, key = nn.params(0.2, 0.5), jax.random.PRNGKey(7)
    v1, g1 = jax.jit(mine.value_and_grad)(params, key, nn.data)
    v2, g2 = jax.jit(ref.value_and_grad)(params, key, nn.data)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5)


def test_cubo_is_exact_at_the_posterior(page, normal_normal):
    nn = normal_normal
    obj = page["neg_cubo"](nn.model, nn.guide, 2.0, 10)
    est = jax.jit(jax.vmap(lambda k: obj.estimate(nn.params(*nn.posterior), k, nn.data)))(keys(20))
    np.testing.assert_allclose(-est, nn.log_evidence, atol=2e-4)


@pytest.mark.slow
def test_cubo_gradient_is_unbiased_against_enumeration(page):
    n, k = 2.0, 3
    obj = page["neg_cubo"](dmodel, dguide, n, k)  # discrete site: score-function gradients

    def value(lw):
        return -(jax.nn.logsumexp(n * lw) - jnp.log(k)) / n

    vals, g = jax.jit(jax.vmap(lambda key: obj.value_and_grad(PARAMS, key)))(keys(4000))
    exact = exact_expectation(value)
    assert_unbiased(vals, float(exact(*PARAMS.values())), "−CUBO value")
    grad = jax.grad(exact, argnums=(0, 1))(*PARAMS.values())
    assert_unbiased(np.stack([g["theta"], g["eta"]], 1), np.asarray(grad), "−CUBO gradient")


def _prior():
    numpyro.sample("z", dist.Normal(0.0, 1.0))


def _guide():
    m = numpyro.param("m", 0.0)
    v = numpyro.param("v", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(m, v))


@pytest.mark.parametrize("strategy", ["reparam", "reinforce"])
def test_kl_reward_matches_its_closed_form(page, strategy):
    c, beta, m, v = 0.7, 0.5, 0.2, 0.6
    guide = _guide if strategy == "reparam" else reinforce(_guide)
    obj = page["kl_reward"](_prior, guide, lambda z: -(z["z"] - c) ** 2, beta)
    params = {"m": jnp.asarray(m), "v": jnp.log(jnp.asarray(v))}
    vals, g = jax.jit(jax.vmap(lambda key: obj.value_and_grad(params, key)))(keys(4000))
    # E[r] = −((m − c)² + v²); KL(N(m, v) ‖ N(0, 1)) = −log v + (v² + m²)/2 − 1/2
    exact_value = -((m - c) ** 2 + v**2) - beta * (-math.log(v) + (v**2 + m**2) / 2 - 0.5)
    d_m = -2 * (m - c) - beta * m
    d_log_v = v * (-2 * v - beta * (-1 / v + v))
    assert_unbiased(vals, exact_value, f"kl_reward value ({strategy})")
    assert_unbiased(np.stack([g["m"], g["v"]], 1), [d_m, d_log_v], f"kl_reward grad ({strategy})")
