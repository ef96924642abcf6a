"""Baselines: exact state updates, unbiasedness, measured variance reduction, clear errors.

The variance check compares log-variances with a margin of 4 standard errors of
their difference (``assert_lower_variance``), both measured from the samples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stackvi as sv
from stackvi.axes import PARTICLES
from stackvi.baselines import Baseline, LeaveOneOut, MovingAverage, resolve
from stackvi.baselines import _EMAState as EMAState
from stackvi.estimators import Objective, particles
from stackvi.handlers import reinforce, simulate
from stackvi.terms import Term, Terms
from tests.conftest import RebarToy, assert_lower_variance, assert_unbiased, keys, per_key

N = 20_000


def rebar_particles(toy: RebarToy, guide, k: int, scalar: bool = False) -> Objective:
    """The REBAR toy averaged over ``k`` particles (Terms), or through a logsumexp (scalar)."""

    def one():
        b = simulate(guide)["b"]["value"]
        return Terms((Term("cost", -((b - toy.t) ** 2), ()),))

    def program():
        costs = particles(one, k)()
        if scalar:
            return jax.nn.logsumexp(costs.per(("particles",))) - jnp.log(k)
        return costs.mean("particles")

    return Objective(program, guide, guide, name="rebar")


# --------------------------------------------------------------------------- LeaveOneOut


def test_leave_one_out_exact():
    signal = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    b, state = LeaveOneOut()(signal, ("data", PARTICLES), ())
    np.testing.assert_allclose(b, [[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]])
    assert state == ()
    b1, _ = LeaveOneOut()(jnp.array([[4.0]]), ("data", PARTICLES), ())
    assert b1.tolist() == [[0.0]]  # one particle: nothing to leave out, plain REINFORCE
    with pytest.raises(ValueError, match="particle axis 'particles'.*num_particles"):
        LeaveOneOut()(signal, ("data",), ())


def test_leave_one_out_on_a_scalar_objective_is_a_clear_error(rebar):
    obj = rebar_particles(rebar, reinforce(rebar.guide, baseline="loo"), 4, scalar=True)
    with pytest.raises(ValueError, match=r"site 'b'.*LeaveOneOut.*returns a scalar.*'ema'"):
        jax.jit(obj.value_and_grad)({"eta": jnp.float32(0.3)}, jax.random.PRNGKey(0))
    # the same objective returning Terms is fine
    ok = rebar_particles(rebar, reinforce(rebar.guide, baseline="loo"), 4)
    jax.jit(ok.value_and_grad)({"eta": jnp.float32(0.3)}, jax.random.PRNGKey(0))


# --------------------------------------------------------------------------- MovingAverage


def test_moving_average_state_threads_through_value_and_grad_with_state(rebar):
    decay = 0.8
    obj = rebar.objective(reinforce(rebar.guide, baseline=MovingAverage(decay)))
    params = {"eta": jnp.float32(0.4)}
    state = obj.init_state(params, jax.random.PRNGKey(0))
    assert set(state) == {"b"} and float(state["b"].weight) == 0.0
    step = jax.jit(obj.value_and_grad_with_state)
    p = float(jax.nn.sigmoid(0.4))
    ema = weight = 0.0
    for i, k in enumerate(keys(4)):
        value, grads, new_state = step(params, state, k)
        b_expected = ema / weight if weight > 0 else 0.0
        # the gradient uses the baseline from the *incoming* state: (b − p)(L − b₀),
        # where the sample b is read off the value: −(1 − t)² < −1/4 < −t²
        sample = 1.0 if float(value) < -0.25 else 0.0
        assert float(grads["eta"]) == pytest.approx((sample - p) * (float(value) - b_expected),
                                                    rel=1e-4, abs=1e-7), i
        ema = decay * ema + (1 - decay) * float(value)
        weight = decay * weight + (1 - decay)
        assert float(new_state["b"].ema) == pytest.approx(ema, rel=1e-5)
        assert float(new_state["b"].weight) == pytest.approx(weight, rel=1e-5)
        state = new_state
    # value_and_grad starts from a fresh state every call: plain REINFORCE
    value, grads = obj.value_and_grad(params, keys(1)[0])
    assert float(grads["eta"]) == pytest.approx(
        ((1.0 if float(value) < -0.25 else 0.0) - p) * float(value), rel=1e-4)
    with pytest.raises(ValueError, match="decay"):
        MovingAverage(1.0)


def test_fit_threads_moving_average_state(rebar):
    decay, steps = 0.9, 30
    obj = rebar.objective(reinforce(rebar.guide, baseline=MovingAverage(decay)))
    result = sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.sgd(0.1), num_steps=steps,
                    chunk_size=7, progress=False)
    st_ = result.baseline_state["b"]
    assert float(st_.weight) == pytest.approx(1 - decay**steps, rel=1e-5)
    # the average is the bias-corrected EMA of the per-step signals, which are the values
    ema = 0.0
    for v in result.history:
        ema = decay * ema + (1 - decay) * float(v)
    assert float(st_.ema) == pytest.approx(ema, rel=1e-4)


# ---------------------------------------------------------------------- unbiased, lower variance


def grads_over_keys(obj, params, state=None, n=N):
    return np.asarray(per_key(obj, params, n, state=state)[1]["eta"])


TOY = RebarToy()
OBJS = {
    "plain": TOY.objective(reinforce(TOY.guide)),
    "ema": TOY.objective(reinforce(TOY.guide, baseline="ema")),
    "loo4": rebar_particles(TOY, reinforce(TOY.guide, baseline="loo"), 4),
    "none4": rebar_particles(TOY, reinforce(TOY.guide), 4),
}


@settings(max_examples=2, deadline=None, derandomize=True)
@given(eta=st.floats(-1.5, 1.5))
@pytest.mark.slow
def test_each_baseline_keeps_the_mean_and_reduces_the_variance(eta):
    toy = TOY
    params = {"eta": jnp.float32(eta)}
    exact = toy.grad(eta)

    plain = grads_over_keys(OBJS["plain"], params)
    assert_unbiased(plain, exact, "no baseline")

    # MovingAverage, warmed up: any b independent of this step's sample keeps the mean
    warm = {"b": EMAState(jnp.float32(toy.value(eta)), jnp.float32(1.0))}
    g_ema = grads_over_keys(OBJS["ema"], params, warm)
    assert_unbiased(g_ema, exact, "moving average")
    assert_lower_variance(g_ema, plain, "moving average vs none")

    # LeaveOneOut over 4 particles, against the same objective without a baseline
    loo4 = grads_over_keys(OBJS["loo4"], params)
    none4 = grads_over_keys(OBJS["none4"], params)
    assert_unbiased(loo4, exact, "leave-one-out, 4 particles")
    assert_unbiased(none4, exact, "no baseline, 4 particles")
    assert_lower_variance(loo4, none4, "leave-one-out vs none")


def test_resolve():
    assert resolve(None) is None
    b = MovingAverage(0.5)
    assert resolve(b) is b
    assert isinstance(resolve("ema"), MovingAverage)
    assert isinstance(resolve("moving_average"), MovingAverage)
    assert isinstance(resolve("loo"), LeaveOneOut)
    assert isinstance(resolve("leave_one_out"), LeaveOneOut)
    with pytest.raises(ValueError, match="unknown baseline 'mean'"):
        resolve("mean")
    z, s = Baseline()(jnp.ones(3), ("particles",), ())
    assert z.tolist() == [0.0, 0.0, 0.0] and s == ()
