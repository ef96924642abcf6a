"""``fit``: convergence to the exact posterior, history, constraints, checkpoints, NaNs."""

from __future__ import annotations

import math

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
from stackvi.fit import load
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
    with pytest.raises(ValueError, match="num_steps"):
        sv.fit(estimators.elbo(nn.model, nn.guide), jax.random.PRNGKey(1), nn.data, num_steps=0)


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


def test_checkpoint_then_resume_continues(tmp_path, normal_normal):
    nn = normal_normal
    obj = estimators.elbo(nn.model, reinforce(nn.guide, baseline="ema"))
    path = tmp_path / "ckpt.pkl"
    lr, n1, n2 = 0.02, 40, 25
    first = sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=optax.adam(lr), num_steps=n1,
                   progress=False, checkpoint=path)
    saved = load(path)
    np.testing.assert_array_equal(saved.history, first.history)
    np.testing.assert_allclose(saved.raw_params["m"], first.raw_params["m"])

    second = sv.fit(obj, jax.random.PRNGKey(1), nn.data, optimizer=optax.adam(lr),
                    num_steps=n2, progress=False, resume=path)
    assert second.history.shape == (n1 + n2,)
    np.testing.assert_array_equal(second.history[:n1], first.history)
    assert int(second.opt_state[0].count) == n1 + n2  # Adam's step counter continued
    decay = 0.9  # MovingAverage's default
    assert float(second.baseline_state["z"].weight) == pytest.approx(1 - decay ** (n1 + n2),
                                                                     rel=1e-5)
    # One resumed step moves the params by at most ~lr (Adam): it starts at the checkpoint.
    one = sv.fit(obj, jax.random.PRNGKey(2), nn.data, optimizer=optax.adam(lr), num_steps=1,
                 progress=False, resume=path)
    for name in ("m", "v"):
        step = abs(float(one.raw_params[name]) - float(first.raw_params[name]))
        assert step <= 1.01 * lr, (name, step)
    assert abs(float(first.raw_params["m"]) - 0.0) > 10 * lr  # the fresh init is far away


def test_resume_with_the_same_key_draws_fresh_samples(tmp_path, normal_normal):
    nn = normal_normal
    obj = estimators.elbo(nn.model, nn.guide)
    path = tmp_path / "frozen.pkl"
    # sgd(0): the params never move, so equal step keys would give equal histories
    kw = dict(optimizer=optax.sgd(0.0), num_steps=6, progress=False)
    first = sv.fit(obj, jax.random.PRNGKey(0), nn.data, checkpoint=path, **kw)
    again = sv.fit(obj, jax.random.PRNGKey(0), nn.data, resume=path, **kw)
    np.testing.assert_array_equal(again.history[:6], first.history)
    assert not np.any(again.history[6:] == first.history)


def lognormal_model():
    numpyro.sample("z", dist.LogNormal(0.0, 1.0))


def normal_guide():
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))


def test_fit_raises_non_finite_error_naming_the_site():
    obj = estimators.elbo(lognormal_model, normal_guide, num_particles=8)
    with pytest.raises(NonFiniteError, match=r"step \d+: .*p:z"):
        sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.adam(0.01), num_steps=20,
               progress=False)
