"""The ``mvd`` strategy: branch layout, the Normal–Normal ELBO (DESIGN.md §7), jit and
eager, and the errors. Per-family unbiasedness is in tests/estimators/test_estimator_matrix.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed

from stackvi import estimators
from stackvi.estimators import log_weight
from stackvi.gradients import Axis, recording
from stackvi.handlers import mvd
from tests.conftest import NormalNormal, assert_lower_variance, assert_unbiased, keys


def test_branch_layout():
    """Branch 0 is the sample; J extra samples × D coordinates follow along a named dim."""

    def model():
        with numpyro.plate("i", 4):
            numpyro.sample("z", dist.Normal(0.0, 1.0).expand([4, 2]).to_event(1))

    def guide():
        with numpyro.plate("i", 4):
            numpyro.sample("z", dist.Normal(numpyro.param("m", jnp.zeros((4, 2))), 1.0).to_event(1))

    with recording() as rec:
        terms = seed(log_weight(model, mvd(guide)), 0)()
    node = rec.records[0]
    axis, (coord, pieces, size) = node.axis, node.static
    assert (axis, coord, size) == (Axis("mvd:z"), Axis("mvd:z:coord"), 2)
    assert pieces == ((0, 1), (2, -1))  # loc: W± ; scale: Maxwell vs the sample itself
    q = {t.label: t for t in terms.terms}["q:z"]
    assert q.names == (Axis("mvd:z"), "i") and q.array.shape == (1 + 3 * 2, 4)
    theta = node.extra[0]
    assert theta.names == ("i", Axis("mvd:z:coord")) and theta.array.shape == (4, 2)


@pytest.mark.parametrize("jit", [pytest.param(False, marks=pytest.mark.slow), True])
def test_normal_normal_elbo_unbiased(jit):
    nn = NormalNormal()
    obj = estimators.elbo(nn.model, mvd(nn.guide))
    m, v = 0.4, 0.6
    f = jax.vmap(lambda k: obj.value_and_grad(nn.params(m, v), k, nn.data))
    n = 2000
    values, grads = (jax.jit(f) if jit else f)(keys(n))
    assert_unbiased(values, nn.elbo(m, v), "ELBO")
    assert_unbiased(grads["m"], nn.grad_m(m, v), "d/dm")
    assert_unbiased(grads["v"], nn.grad_log_v(m, v), "d/dlog v")


def test_mvd_variance_below_reinforce_on_normal_normal_loc():
    from stackvi.handlers import reinforce

    nn = NormalNormal()
    p = nn.params(0.4, 0.6)
    n = 2000

    def run(obj, ks):
        return jax.jit(jax.vmap(lambda k: obj.value_and_grad(p, k, nn.data)))(ks)

    _, g_mvd = run(estimators.elbo(nn.model, mvd(nn.guide)), keys(n, 1))
    _, g_rf = run(estimators.elbo(nn.model, reinforce(nn.guide)), keys(n, 2))
    assert_lower_variance(np.asarray(g_mvd["m"]), np.asarray(g_rf["m"]), "mvd vs reinforce")


@pytest.mark.slow
def test_errors_name_site_and_distribution():
    def student_guide():
        numpyro.sample("p", dist.StudentT(3.0, 0.0, 1.0))

    with pytest.raises(ValueError, match="'p' \\(StudentT\\) has no weak-derivative decomposition"):
        seed(mvd(student_guide), 0)()

    def model():
        numpyro.sample("z", dist.Normal(jnp.zeros(3), 1.0))

    def unplated():
        numpyro.sample("z", dist.Normal(jnp.zeros(3), 1.0))

    obj = estimators.elbo(model, mvd(unplated))
    with pytest.raises(ValueError, match="'z'.*batch dim -1 of size 3.*plate"):
        obj.estimate({}, jax.random.PRNGKey(0))

    # A nonlinear objective is no longer refused: branches by continuation (gradients/rerun.py)
    # re-run the bound with the site changed in one particle (tests/gradients/test_rerun.py).
    nn = NormalNormal()
    iwae = estimators.iwae(nn.model, mvd(nn.guide), num_particles=2)
    _, grads = iwae.value_and_grad(nn.params(0.0, 1.0), jax.random.PRNGKey(0), nn.data)
    assert all(bool(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
