"""Every gallery example (``examples/``) runs unchanged under stackvi and agrees with NumPyro.

Default stage (cheap): where an exact answer exists it is checked exactly —
the Gaussian mixture against ``logsumexp`` over the assignments, the HMM
against the forward algorithm and NumPyro's own enumerated ``log_density``
(the one its NUTS uses; it differs by the constant ``log K`` per padded step,
see ``test_hmm_exact``).

Slow stage, per example (tracing and compiling a model costs ~40 s of CPU on
the shared machine): at NumPyro's own initial parameters (``SVI.init``),
stackvi's ELBO estimate and NumPyro's (its ``Trace_ELBO`` /
``TraceEnum_ELBO``) are two unbiased estimates of the same number, so their
means over ``N`` keys must agree within ``4·√(se₁² + se₂²)`` (``se`` measured
from the same samples; see ``tests/conftest.py`` for the 4).

Also slow: ``stackvi.fit`` and NumPyro's ``SVI.run`` start from the same
parameters (NumPyro's ``SVI.init``, passed to ``fit(init_params=...)``), run
the same optax optimizer for the same steps, ``R`` seeds each; every final
fit is scored by one estimator with many particles and one fixed key. The two
samples of final ELBOs must have equal means within a two-sample Student-t
bound (the spread across seeds measures both the optimizers' noise and the
scoring's). On the mixture, the discrete strategies (``enumerate``, ``mvd``,
``reinforce`` with a leave-one-out baseline) each reach the optimum found by
model-side enumeration.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from numpyro.infer import SVI

import stackvi as sv
from tests.conftest import assert_unbiased

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import _gallery  # noqa: E402

sys.path.pop(0)

Z = 4.0  # standard errors; see tests/conftest.py
N_INIT = 400  # keys for the same-parameters check


def _setup(name, key=0):
    entry = _gallery.BY_NAME[name]
    ex = _gallery.load(name)
    args, kwargs = ex.data()
    optimizer = optax.adam(entry.lr)
    svi = SVI(ex.model, ex.guide, optimizer, _gallery.numpyro_loss(entry))
    state = svi.init(jax.random.PRNGKey(key), *args, **kwargs)
    return entry, ex, args, kwargs, optimizer, svi, state


def _sv_elbos(obj, raw_params, args, kwargs, n, seed=1):
    """stackvi's ELBO estimate at ``n`` fixed keys (one particle each)."""
    state = obj.init_state(raw_params, jax.random.PRNGKey(0), *args, **kwargs)
    est = getattr(obj, "estimate_with_state", None)
    one = ((lambda k: est(raw_params, state, k, *args, **kwargs)) if est is not None
           else (lambda k: obj.estimate(raw_params, k, *args, **kwargs)))
    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), n)))


def _np_elbos(loss, model, guide, params, args, kwargs, n, seed=1):
    """NumPyro's ELBO (minus its loss) at ``n`` fixed keys; ``params`` constrained."""
    one = lambda k: -loss.loss(k, params, model, guide, *args, **kwargs)
    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), n)))


def _with_mutable(params, svi_state):
    """NumPyro's losses read ``numpyro.mutable`` sites (flax BatchNorm) from the params dict."""
    return {**params, **(svi_state.mutable_state or {})}


def _mean_se(x):
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def _params(name):
    # every model costs ~40 s of CPU to trace and compile twice: the default stage keeps
    # only the exact checks below
    marks = [pytest.mark.slow]
    if name == "hmm_enum":
        marks.append(pytest.mark.xfail(
            strict=True, reason="NumPyro's TraceEnum_ELBO mis-scores sites enumerated inside "
            "scan (test_hmm_exact checks stackvi against the forward algorithm)"))
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_params(e.name) for e in _gallery.EXAMPLES])
def test_same_elbo_at_numpyro_init(name):
    entry, ex, args, kwargs, _, svi, state = _setup(name)
    raw = svi.optim.get_params(state.optim_state)  # unconstrained, as stackvi's params
    obj = sv.estimators.elbo(ex.model, ex.guide)
    assert set(obj.init(jax.random.PRNGKey(0), *args, **kwargs)) == set(raw)
    a = _sv_elbos(obj, raw, args, kwargs, N_INIT)
    b = _np_elbos(svi.loss, ex.model, ex.guide, _with_mutable(svi.get_params(state), state),
                  args, kwargs, N_INIT)
    (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert abs(ma - mb) <= Z * math.hypot(sa, sb) + 1e-5 * abs(mb), (ma, sa, mb, sb)


@pytest.mark.slow
def test_gmm_exact():
    """AutoDelta + assignments summed out: the ELBO is log p(x, θ), computed by logsumexp."""
    ex = _gallery.load("gmm")
    args, kwargs = ex.data()
    obj = sv.estimators.elbo(ex.model, ex.guide)
    raw = obj.init(jax.random.PRNGKey(0), *args, **kwargs)
    value = obj.estimate(raw, jax.random.PRNGKey(3), *args, **kwargs)
    point = ex.guide.median(obj.constrain(raw, *args, **kwargs))
    exact = ex.log_joint(args[0], point["weights"], point["locs"], point["scales"])
    np.testing.assert_allclose(value, exact, rtol=1e-5)


@pytest.mark.slow
def test_hmm_exact():
    """Hidden states summed out inside scan = forward algorithm = NumPyro's enumerated density."""
    from numpyro.contrib.funsor import enum
    from numpyro.contrib.funsor import log_density as enum_log_density
    from numpyro.handlers import block
    from numpyro.infer.autoguide import AutoDelta

    ex = _gallery.load("hmm_enum")
    (seqs, lengths), _ = ex.data()
    guide = AutoDelta(block(ex.model, hide=["x"]))
    obj = sv.estimators.elbo(ex.model, guide)
    raw = obj.init(jax.random.PRNGKey(0), seqs, lengths)
    point = guide.median(obj.constrain(raw, seqs, lengths))
    # jitted: eager op-by-op enumeration is slow
    value = jax.jit(lambda p: obj.estimate(p, jax.random.PRNGKey(1), seqs, lengths))(raw)
    prior = ex.model_prior(point["probs_x"], point["probs_y"])
    exact = ex.log_likelihood(seqs, lengths, point["probs_x"], point["probs_y"]) + prior
    numpyro_lp = jax.jit(lambda p: enum_log_density(enum(ex.model, -3), (seqs, lengths), {},
                                                    p)[0])(point)
    np.testing.assert_allclose(value, exact, rtol=1e-5)
    # NumPyro sums a masked enumerated state with weight 1 per value (log K per padded step);
    # stackvi sums it with its unmasked probabilities (0 per padded step): a constant apart.
    padded = int(np.sum(seqs.shape[1] - np.asarray(lengths)))
    np.testing.assert_allclose(numpyro_lp, exact + padded * math.log(ex.HIDDEN), rtol=1e-5)


# --------------------------------------------------------------------------- slow: whole fits

R = 4  # seeds per method


def _t_quantile(df, z=Z):
    """The Student-t quantile with the two-sided tail of ``z`` standard normal errors."""
    from scipy import stats

    return float(stats.t.ppf(stats.norm.cdf(z), df))


def _final_elbos(name, seeds, n_eval=2000):
    entry, ex, args, kwargs, optimizer, svi, state = _setup(name)
    raw0 = svi.optim.get_params(state.optim_state)
    obj = sv.estimators.elbo(ex.model, ex.guide)
    score = _gallery.numpyro_loss(entry)
    finals = {"stackvi": [], "numpyro": []}
    for s in seeds:
        key = jax.random.PRNGKey(100 + s)
        res = sv.fit(obj, key, *args, optimizer=optimizer, num_steps=entry.steps,
                     init_params=raw0, progress=False, **kwargs)
        # SVI.run draws from init_state's key, not from its rng_key argument
        out = svi.run(key, entry.steps, *args, progress_bar=False,
                      init_state=state._replace(rng_key=key), **kwargs)
        for label, p in (("stackvi", res.params), ("numpyro", out.params)):
            # in training mode BatchNorm uses batch statistics: the running ones do not matter
            finals[label].append(np.mean(_np_elbos(score, ex.model, ex.guide,
                                                   _with_mutable(p, state), args, kwargs,
                                                   n_eval, seed=7)))
    return {k: np.asarray(v) for k, v in finals.items()}


def _fit_params(name):
    marks = [pytest.mark.slow]
    if name == "hmm_enum":
        marks.append(pytest.mark.xfail(
            strict=True, reason="NumPyro's TraceEnum_ELBO mis-scores sites enumerated inside "
            "scan: SVI optimizes another objective"))
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_fit_params(e.name) for e in _gallery.EXAMPLES])
def test_fit_reaches_svi_elbo(name):
    finals = _final_elbos(name, range(R))
    a, b = finals["stackvi"], finals["numpyro"]
    assert np.all(np.isfinite(a)), a
    # NumPyro's SVI can diverge on a seed (ProdLDA: NaN on one of four here); that run says
    # nothing about stackvi, so the comparison uses NumPyro's finite runs (at least R - 1).
    b = b[np.isfinite(b)]
    assert len(b) >= R - 1, finals["numpyro"]
    na, nb = len(a), len(b)
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    bound = _t_quantile(na + nb - 2) * pooled * math.sqrt(1 / na + 1 / nb)
    assert abs(a.mean() - b.mean()) <= bound, (a, b, bound)


# --------------------------------------------------------------------------- slow: strategies

STRATEGY_STEPS = 4000
STRATEGY_SEEDS = 3


def _gmm_fit(guide, num_particles, seed, x):
    ex = _gallery.load("gmm")
    obj = sv.estimators.elbo(ex.model, guide, num_particles=num_particles)
    # the same start for every strategy (local_guide's params are deterministic)
    params = obj.init(jax.random.PRNGKey(0), x)
    opt = optax.adam(optax.exponential_decay(0.05, STRATEGY_STEPS, 0.02))
    res = sv.fit(obj, jax.random.PRNGKey(seed), x, optimizer=opt, num_steps=STRATEGY_STEPS,
                 init_params=params, progress=False)
    p = res.params
    return float(ex.log_joint(x, p["weights_loc"], p["locs_loc"], p["scales_loc"]))


def _gmm_strategy(name):
    from stackvi import handlers

    guide = _gallery.load("gmm").local_guide
    if name == "reinforce_loo":  # K = 8 particles: LOO needs several
        return handlers.reinforce(guide, sites=["z"], baseline="loo"), 8
    return getattr(handlers, name)(guide, sites=["z"]), 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["enumerate", "mvd", "reinforce_loo"])
def test_gmm_strategy_reaches_the_summed_out_optimum(strategy):
    """Each discrete strategy on the assignments ends where summing them out in the model
    ends: the enumerated optimum of ``log p(x, θ)``.

    The reference sums ``z`` out of the model (the guide without ``z``) and is
    deterministic (point-mass globals). The strategies fit the per-point ``q(z)``
    as well, from the same start with the same decayed Adam; over
    ``STRATEGY_SEEDS`` seeds their mean final ``log p(x, θ)`` must be within a
    Student-t bound of the reference, from their spread, and never tighter than
    the optimizer's convergence (1e-3 relative, the learning rate decayed 50-fold).

    Measured: reference −438.270; after 4,000 steps ``enumerate`` −438.271,
    ``mvd`` −438.280, ``reinforce`` + LOO (K = 8) −438.45 and −438.44 on two seeds.
    After 1,500 steps (the earlier budget) ``enumerate`` — the exact gradient — was
    still at −440.8 and ``reinforce`` + LOO at −450.1 ± 0.3: the joint ELBO over θ
    and the per-point ``q`` converges slowly, whatever the gradient.
    """
    from numpyro.handlers import block

    ex = _gallery.load("gmm")
    (x,), _ = ex.data()
    reference = _gmm_fit(block(ex.local_guide, hide=["z"]), 1, 0, x)
    guide, particles = _gmm_strategy(strategy)
    finals = np.array([_gmm_fit(guide, particles, 1 + s, x) for s in range(STRATEGY_SEEDS)])
    bound = _t_quantile(STRATEGY_SEEDS - 1) * finals.std(ddof=1) / math.sqrt(STRATEGY_SEEDS)
    assert abs(finals.mean() - reference) <= max(bound, 1e-3 * abs(reference)), (
        finals, reference, bound)


@pytest.mark.slow
def test_gmm_reinforce_loo_gradient_is_the_enumerated_one():
    """On the gallery's GMM (150 points, 3 components, local guide), at a generic point:
    REINFORCE + LOO (K = 8) is unbiased for every parameter's gradient, the exact one
    given by enumerating the assignments in the guide."""
    from stackvi import handlers

    ex = _gallery.load("gmm")
    (x,), _ = ex.data()
    exact_obj = sv.estimators.elbo(ex.model, handlers.enumerate(ex.local_guide, sites=["z"]))
    params = exact_obj.init(jax.random.PRNGKey(0), x)
    params = jax.tree_util.tree_map(
        lambda v: v + 0.1 * jax.random.normal(jax.random.PRNGKey(3), v.shape), params)
    _, exact = exact_obj.value_and_grad(params, jax.random.PRNGKey(0), x)
    obj = sv.estimators.elbo(ex.model, handlers.reinforce(ex.local_guide, sites=["z"],
                                                          baseline="loo"), num_particles=8)
    draws = jax.jit(jax.vmap(lambda k: obj.value_and_grad(params, k, x)[1]))(
        jax.random.split(jax.random.PRNGKey(1), 2000))
    for name in exact:
        assert_unbiased(draws[name], exact[name], f"reinforce + loo d/d{name}")
