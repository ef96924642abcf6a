"""The hand-written AIR of ``benchmarks/air.py`` (the compute-limit anchor of the speed
table) estimates the same ELBO and the same gradient as stackvi's AIR.

The anchor is only a fair comparison if it does the same job: its REINFORCE and MVD
steps must be unbiased for the same objective as ``stackvi.models.air``'s. Both are
run on the same params and batch over many keys, and their means are compared with
a two-sample z-test (``|m₁ − m₂| ≤ z·√(se₁² + se₂²)``) on the value and on the
gradient of the ``z_pres`` predictor's bias (where REINFORCE and MVD differ).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stackvi.models import air
from tests.conftest import Z_SIGMAS

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import air as bench_air  # benchmarks/air.py
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_air


def _same_mean(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = abs(a.mean() - b.mean())
    assert diff <= Z_SIGMAS * se, f"{what}: {a.mean():.4g} vs {b.mean():.4g}, |diff| {diff:.3g} " \
                                  f"> {Z_SIGMAS}·se = {Z_SIGMAS * se:.3g}"


def _pres_bias(grads):
    """The gradient of the predictor's bias entry that sets the z_pres logit."""
    _, bias = grads["predict$params"]          # stax.Dense: (W, b)
    return bias[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reinforce", "mvd"])
def test_hand_written_anchor_matches_stackvi(bench, name):
    cfg = bench.QUICK
    x, _ = bench.data(16, cfg.canvas)
    xb = jnp.asarray(x)
    obj = air.ESTIMATORS[name](cfg)
    params = jax.jit(lambda k: obj.init(k, xb, config=cfg))(jax.random.PRNGKey(0))
    surrogate = getattr(bench.HandAIR(cfg), name)
    keys = jax.random.split(jax.random.PRNGKey(1), 400)

    @jax.jit
    def hand(key):
        grads, value = jax.grad(surrogate, has_aux=True)(params, key, xb)
        return value, _pres_bias(grads)

    @jax.jit
    def ours(key):
        value, grads = obj.value_and_grad(params, key, xb, config=cfg)
        return value, _pres_bias(grads)

    hv, hg = jax.lax.map(hand, keys)
    sv, sgr = jax.lax.map(ours, keys)
    _same_mean(hv, sv, f"{name}: the ELBO estimate")
    _same_mean(np.ravel(hg), np.ravel(sgr), f"{name}: d/d(z_pres bias)")
