"""The noisy cone (DESIGN.md §7): the exact evidence, and the bounds of trained guides.

Every bound must sit below ``log p(z = 5) = −5.32323``, and on one trained
hierarchical guide ``HVI ≤ IWHVI(m=5) ≤ DIWHVI(n=5, m=5)`` in expectation.
"Statistically": a mean may exceed another by at most 4 standard errors of
their difference (``σ̂`` from the same samples). The default run trains
briefly; ``-m slow`` trains as long as ``benchmarks/cone.py``.
"""

from __future__ import annotations

import math

import jax
import optax
import pytest

import stackvi as sv
from stackvi.models import cone

Z = 4.0


def test_exact_log_evidence_by_quadrature():
    assert abs(cone.exact_log_evidence() - cone.LOG_EVIDENCE) < 5e-6


def _train(obj, steps, lr=0.02):
    res = sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.adam(lr), num_steps=steps,
                 progress=False)
    return res.raw_params


def _check_trained_bounds(steps: int, num_samples: int, skip: tuple = ()) -> dict:
    objs = cone.objectives()
    labels = list(objs)
    mf_params = _train(objs[labels[0]], steps)          # mean-field, trained by its ELBO
    hier_params = _train(objs[labels[3]], steps)        # the ring, trained by IWHVI
    results = {}
    for i, (label, obj) in enumerate(objs.items()):
        if i in skip:
            continue
        params = mf_params if i < 2 else hier_params
        results[label] = cone.bound(obj, params, jax.random.PRNGKey(10 + i), num_samples)
    for label, (mean, se) in results.items():
        assert mean - Z * se < cone.LOG_EVIDENCE, f"{label} = {mean} ± {se} above log p(z)"

    def at_least(hi, lo, strict=False):
        (m1, s1), (m2, s2) = results[labels[hi]], results[labels[lo]]
        margin = Z * math.hypot(s1, s2)
        assert (m1 - m2 > margin) if strict else (m1 - m2 > -margin), (labels[hi], labels[lo],
                                                                      results)

    at_least(3, 2)                 # IWHVI ≥ HVI
    at_least(4, 3)                 # DIWHVI ≥ IWHVI
    at_least(4, 2, strict=True)    # and the gain is real
    at_least(2, 0, strict=True)    # the ring beats the mean-field Gaussian
    return results


@pytest.mark.slow
def test_trained_cone_bounds_brief():
    _check_trained_bounds(steps=200, num_samples=1000, skip=(1,))  # IWELBO only in the long one


@pytest.mark.slow
def test_trained_cone_bounds_long():
    _check_trained_bounds(steps=3000, num_samples=10_000)
