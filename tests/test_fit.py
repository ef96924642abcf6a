"""``fit``: convergence to the exact posterior, history, constraints, checkpoints, NaNs."""

from __future__ import annotations

import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions import biject_to, constraints

import stackvi as sv
from stackvi import estimators
from stackvi.estimators import NonFiniteError
from stackvi.fit import FitInterrupted, load
from stackvi.handlers import reinforce


def gaussian_kl(m, v, m0, v0):
    """KL(N(m, v²) || N(m0, v0²))."""
    return math.log(v0 / v) + (v**2 + (m - m0) ** 2) / (2 * v0**2) - 0.5


def test_fit_converges_to_the_exact_posterior(normal_normal):
    nn = normal_normal
    obj = estimators.elbo(nn.model, nn.guide, num_particles=8)
    steps = 1500
    # A decaying step size removes most of the SGD noise at the end.
    opt = optax.adam(optax.exponential_decay(0.05, steps, 0.02))
    result = sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=opt, num_steps=steps,
                    progress=False)
    mean, sd = nn.posterior
    m, v = float(result.params["m"]), float(result.params["v"])
    # The Normal guide family contains the posterior, so the optimum is exact. 1e-3 nats of
    # KL means |Δm| ≲ 0.045 σ and |Δv/v| ≲ 0.03: far below where the fit starts (KL ≈ 1).
    assert gaussian_kl(0.0, 1.0, mean, sd) > 0.1
    assert gaussian_kl(m, v, mean, sd) < 1e-3, (m, v, mean, sd)
    assert len(result.history) == steps
    # The exact ELBO at the fit is log p(x) up to that KL; the late estimates agree with it.
    assert nn.elbo(m, v) == pytest.approx(nn.log_evidence, abs=1e-3)
    late = result.history[-300:]
    assert abs(late.mean() - nn.log_evidence) <= 4 * late.std(ddof=1) / math.sqrt(late.size) + 1e-3


def test_history_length_and_chunks(normal_normal):
    nn = normal_normal

    def guide(x, m0=0.0, tag="unused"):  # non-array arguments stay static (closed over)
        assert isinstance(m0, float) and isinstance(tag, str)
        nn.guide(x, m0=m0)

    steps, chunk = 10, 3  # chunks of 3, 3, 3 and a last one of 1
    result = sv.fit(estimators.elbo(lambda x, **kw: nn.model(x), guide), jax.random.PRNGKey(1),
                    nn.data, optimizer=optax.adam(0.01), num_steps=steps, chunk_size=chunk,
                    progress=False, m0=2.0, tag="a string")
    assert result.history.shape == (steps,)
    assert np.all(np.isfinite(result.history))
    # init used the static m0: after 10 Adam steps of 0.01 the mean is still near 2.0
    assert abs(float(result.params["m"]) - 2.0) <= 10 * 0.01 + 1e-6


K_MEANS = jnp.array([-2.0, 0.0, 3.0])


def mixture_model(x):
    k = numpyro.sample("k", dist.Categorical(jnp.ones(3) / 3))
    numpyro.sample("x", dist.Normal(K_MEANS[k], 1.0), obs=x)


def mixture_guide(x):
    probs = numpyro.param("probs", jnp.ones(3) / 3, constraint=constraints.simplex)
    scale = numpyro.param("scale", 1.0, constraint=constraints.interval(0.5, 2.0))
    del scale  # a constrained param the program does not use still round-trips
    numpyro.sample("k", dist.Categorical(probs))


def test_constrained_params():
    obj = estimators.elbo(mixture_model, reinforce(mixture_guide, baseline="ema"),
                          num_particles=4)
    x = jnp.float32(2.6)
    result = sv.fit(obj, jax.random.PRNGKey(0), x, optimizer=optax.adam(0.05), num_steps=300,
                    progress=False)
    probs, raw = result.params["probs"], result.raw_params["probs"]
    assert raw.shape == (2,)  # unconstrained: the simplex has one dimension fewer
    np.testing.assert_allclose(probs, biject_to(constraints.simplex)(raw), rtol=1e-6)
    assert float(jnp.sum(probs)) == pytest.approx(1.0, abs=1e-6) and bool(jnp.all(probs > 0))
    assert 0.5 < float(result.params["scale"]) < 2.0
    # The exact posterior puts ≈ 0.95 on the component at 3.0: the fit must move toward it.
    log_post = jax.nn.log_softmax(dist.Normal(K_MEANS, 1.0).log_prob(x))
    assert float(jnp.exp(log_post)[2]) > 0.9
    assert float(probs[2]) > 0.8
    const = obj.constrain(result.raw_params, x)
    np.testing.assert_allclose(const["probs"], probs, rtol=1e-6)


def test_checkpoint_then_resume_equals_one_run(tmp_path, normal_normal):
    nn = normal_normal
    obj = estimators.elbo(nn.model, reinforce(nn.guide, baseline="ema"))
    opt, path = optax.adam(0.02), tmp_path / "ckpt.npz"
    n1, n = 40, 65
    first = sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=opt, num_steps=n1,
                   progress=False, checkpoint=path)
    saved = load(path)
    np.testing.assert_array_equal(saved.history, first.history)
    np.testing.assert_array_equal(saved.raw_params["m"], first.raw_params["m"])

    # num_steps counts the whole run: resuming to 65 equals one run of 65, bit for bit
    second = sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=opt, num_steps=n,
                    progress=False, resume=path)
    whole = sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=opt, num_steps=n,
                   progress=False, chunk_size=7)
    for a, b in zip(jax.tree_util.tree_leaves(tuple(second)),
                    jax.tree_util.tree_leaves(tuple(whole)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(second.opt_state[0].count) == n  # Adam's step counter continued
    decay = 0.9  # MovingAverage's default
    assert float(second.baseline_state["z"].weight) == pytest.approx(1 - decay ** n, rel=1e-5)
    with pytest.warns(UserWarning, match="rng_key differs"):
        other = sv.fit(obj, jax.random.PRNGKey(1), nn.data, optimizer=opt, num_steps=n1 + 1,
                       progress=False, resume=path)
    # One resumed step moves the params by at most ~lr (Adam): it starts at the checkpoint.
    for name in ("m", "v"):
        step = abs(float(other.raw_params[name]) - float(first.raw_params[name]))
        assert step <= 1.01 * 0.02, (name, step)


def test_resume_with_the_same_key_draws_fresh_samples(tmp_path, normal_normal):
    nn = normal_normal
    obj = estimators.elbo(nn.model, nn.guide)
    path = tmp_path / "frozen.npz"
    # sgd(0): the params never move, so equal step keys would give equal histories
    kw = dict(optimizer=optax.sgd(0.0), progress=False)
    first = sv.fit(obj, jax.random.PRNGKey(0), nn.data, checkpoint=path, num_steps=6, **kw)
    again = sv.fit(obj, jax.random.PRNGKey(0), nn.data, resume=path, num_steps=12, **kw)
    np.testing.assert_array_equal(again.history[:6], first.history)
    assert not np.any(again.history[6:] == first.history)


_SHARED: dict = {}


def _shared(nn):
    """One objective and optimizer per fixture: fits of them reuse one compilation."""
    if id(nn) not in _SHARED:
        _SHARED[id(nn)] = (nn, estimators.elbo(nn.model, nn.guide), optax.adam(0.05))
    return _SHARED[id(nn)][1:]


def test_compiled_once_and_chunking_does_not_change_results(normal_normal):
    nn = normal_normal
    fit_module = sys.modules["stackvi.fit"]
    obj, opt = _shared(nn)

    def run(steps, chunk):
        return sv.fit(obj, jax.random.PRNGKey(5), nn.data, optimizer=opt, num_steps=steps,
                      chunk_size=chunk, progress=False)

    runs = [run(23, 5)]
    before = fit_module.TRACES
    runs += [run(steps, chunk) for steps, chunk in ((23, 1), (23, None), (17, 4))]
    assert fit_module.TRACES == before  # no compilation after the first fit
    for r in runs[1:3]:
        np.testing.assert_array_equal(r.history, runs[0].history)
        np.testing.assert_array_equal(r.raw_params["m"], runs[0].raw_params["m"])
    np.testing.assert_array_equal(runs[3].history, runs[0].history[:17])


def test_checkpoint_every_steps_and_seconds(tmp_path, normal_normal, monkeypatch):
    nn = normal_normal
    fit_module = sys.modules["stackvi.fit"]
    written = []
    real_save = fit_module.save
    monkeypatch.setattr(fit_module, "save", lambda path, r, **kw: (
        written.append((len(r.history), kw["info"]["status"])), real_save(path, r, **kw)))
    obj, opt = _shared(nn)
    sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=opt, num_steps=25, chunk_size=4,
           progress=False, checkpoint=tmp_path / "a" / "new" / "c.npz", checkpoint_every=10)
    assert written == [(10, "running"), (20, "running"), (25, "done")]
    written.clear()
    monkeypatch.setattr(fit_module, "_clock", iter(range(0, 10**6, 60)).__next__)
    sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=opt, num_steps=9, chunk_size=4,
           progress=False, checkpoint=tmp_path / "b.npz", checkpoint_every="1m")
    assert written == [(4, "running"), (8, "running"), (9, "done")]


class _Interrupt:
    """A progress bar that presses Ctrl-C on its third update."""

    def __init__(self, *a, **kw):
        self.n = 0

    def update(self, n):
        self.n += 1
        if self.n == 3:
            raise KeyboardInterrupt

    def set_postfix(self, *a, **kw):
        pass

    def close(self):
        pass


def test_ctrl_c_saves_the_last_complete_step(tmp_path, normal_normal, monkeypatch):
    nn = normal_normal
    (obj, opt), path = _shared(nn), tmp_path / "c.npz"
    kw = dict(optimizer=opt, num_steps=30, chunk_size=4, progress=False)
    monkeypatch.setattr(sys.modules["stackvi.fit"], "tqdm", _Interrupt)
    with pytest.raises(FitInterrupted, match="after 12 steps.*resume=") as info:
        sv.fit(obj, jax.random.PRNGKey(0), nn.data, checkpoint=path, checkpoint_every=1000,
               **kw)  # by steps only: chunks stay 4 steps however slow the machine
    assert isinstance(info.value, KeyboardInterrupt) and info.value.checkpoint == path
    assert len(info.value.result.history) == 12 and len(load(path).history) == 12
    monkeypatch.undo()
    resumed = sv.fit(obj, jax.random.PRNGKey(0), nn.data, resume=path, **kw)
    whole = sv.fit(obj, jax.random.PRNGKey(0), nn.data, **kw)
    np.testing.assert_array_equal(resumed.history, whole.history)


BAD_ARGS = [
    (dict(num_steps=0), ValueError, "num_steps must be >= 1, got 0"),
    (dict(num_steps=2.5), TypeError, "num_steps must be an integer"),
    (dict(chunk_size=-3), ValueError, "chunk_size must be >= 1, got -3"),
    (dict(chunk_size=0), ValueError, "chunk_size must be >= 1"),
    (dict(progress="yes"), TypeError, "progress must be True or False"),
    (dict(optimizer="adam"), TypeError, "optimizer must be an optax GradientTransformation"),
    (dict(init_params=[1.0]), TypeError, "init_params must be a dict"),
    (dict(checkpoint_every=10), ValueError, "checkpoint_every needs checkpoint=PATH"),
    (dict(checkpoint="{tmp}/c.npz", checkpoint_every=0), ValueError, "checkpoint_every: give"),
    (dict(checkpoint="{tmp}/c.npz", checkpoint_every="10 minutes"), ValueError,
     "checkpoint_every: give"),
    (dict(checkpoint="{tmp}"), IsADirectoryError, "is a folder"),
    (dict(resume="{tmp}/none.npz"), FileNotFoundError, "no checkpoint file"),
    (dict(rng_key=0), TypeError, "rng_key must be one PRNG key"),
    (dict(objective=print), TypeError, "objective must be a stackvi.estimators.Objective"),
]


@pytest.mark.parametrize("kw, error, message", BAD_ARGS, ids=[m for *_, m in BAD_ARGS])
def test_bad_arguments_fail_at_once_in_one_line(tmp_path, normal_normal, kw, error, message):
    nn = normal_normal
    kw = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v
          for k, v in kw.items()}
    call = dict(objective=estimators.elbo(nn.model, nn.guide), rng_key=jax.random.PRNGKey(0))
    call.update({k: kw.pop(k) for k in ("objective", "rng_key") if k in kw})
    kw = {"progress": False, **kw}
    with pytest.raises(error, match=re.escape(message)) as info:
        sv.fit(call["objective"], call["rng_key"], nn.data, **kw)
    assert "\n" not in str(info.value)


def lognormal_model():
    numpyro.sample("z", dist.LogNormal(0.0, 1.0))


def normal_guide():
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))


@pytest.mark.slow
def test_fit_raises_non_finite_error_naming_the_site():
    obj = estimators.elbo(lognormal_model, normal_guide, num_particles=8)
    with pytest.raises(NonFiniteError, match=r"step \d+: .*p:z"):
        sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.adam(0.01), num_steps=20,
               progress=False)


def nan_grad_guide():
    m = numpyro.param("m", 0.0)
    # finite value everywhere, but d/dm sqrt(max(1 - m, 0)) is 0 * inf = NaN once m >= 1
    numpyro.sample("z", dist.Normal(m + 0.0 * jnp.sqrt(jnp.maximum(1.0 - m, 0.0)), 1.0))


def nan_grad_model():
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(z, 0.5), obs=3.0)


def test_non_finite_gradient_stops_with_the_last_good_state(tmp_path):
    obj = estimators.elbo(nan_grad_model, nan_grad_guide)
    path = tmp_path / "c.npz"
    with pytest.raises(NonFiniteError, match=r"step \d+: the gradient of elbo is not finite "
                       r"for parameters \['m'\].*q:z.*saved in") as info:
        sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.sgd(0.05), num_steps=200,
               chunk_size=16, progress=False, checkpoint=path)
    good = info.value.result
    step = int(re.match(r"step (\d+)", str(info.value)).group(1))
    assert 0 < step == len(good.history) == len(load(path).history)
    # the last good state is the one whose gradient is NaN: m just crossed 1, finite
    assert 1.0 <= float(good.raw_params["m"]) < 2.0 and np.all(np.isfinite(good.history))
    assert info.value.checkpoint == path
    # the failing chunk is re-run step by step: its last good state is the one a fit
    # stopped right there reaches, bit for bit (the step fell mid-chunk: 16 does not divide it)
    assert step % 16
    stopped = sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.sgd(0.05), num_steps=step,
                     chunk_size=16, progress=False)
    assert np.array_equal(stopped.raw_params["m"], good.raw_params["m"])
    np.testing.assert_array_equal(stopped.history, good.history)


@pytest.mark.filterwarnings("ignore:fit. the params after")  # huge params: no constrained ones
def test_an_update_that_overflows_names_the_parameters(normal_normal):
    nn = normal_normal
    # step 0 makes the params huge (or inf): either the update or the next value is caught
    with pytest.raises(NonFiniteError, match=r"step (\d+): .*(non-finite|not finite).*lower.*"
                       r"in this error's .result") as info:
        sv.fit(estimators.elbo(nn.model, nn.guide), jax.random.PRNGKey(0), nn.data,
               optimizer=optax.sgd(1e38), num_steps=5, progress=False)
    step = int(re.match(r"step (\d+)", str(info.value)).group(1))
    assert step <= 1 and len(info.value.result.history) == step
    assert all(bool(jnp.isfinite(v)) for v in info.value.result.raw_params.values())
