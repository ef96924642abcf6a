"""``fit`` treats a NumPyro user's habits as ``SVI.run`` does (issue 11).

Data computed on in Python, ``numpyro.mutable`` state (flax BatchNorm),
``numpyro.optim`` optimizers, and what ``svi.get_params``/``svi.evaluate`` give.
The models here have no latent sites, so every objective value is exact and
stackvi and NumPyro must agree to float precision from the same start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import numpyro.optim
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import stackvi as sv
from stackvi import estimators
from stackvi.estimators.core import MUTABLE

DEPT = np.array([0, 0, 1, 1, 2, 2])
MALE = np.array([1, 0, 1, 0, 1, 0])
APPS = np.array([100, 90, 80, 70, 60, 50])
ADMIT = np.array([60, 50, 30, 40, 20, 25])


def ucbadmit(dept, male, applications, admit=None):
    n_dept = len(np.unique(dept))  # NumPy on the data: needs concrete values
    a = numpyro.sample("a", dist.Normal(0, 1).expand([n_dept]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0, 1))
    with numpyro.plate("data", len(dept)):
        numpyro.sample("admit", dist.Binomial(applications, logits=a[dept] + b * male),
                       obs=admit)


def dawid_skene_like(positions, annotations):
    n_pos = int(np.max(positions)) + 1  # int() of the data
    w = numpyro.param("w", jnp.zeros(n_pos))
    with numpyro.plate("items", annotations.shape[0]):
        numpyro.sample("y", dist.Normal(w[positions], 1.0), obs=annotations)


@pytest.mark.slow
def test_python_computation_on_the_data_works_as_in_svi_run():
    obj = estimators.elbo(ucbadmit, AutoNormal(ucbadmit))
    r = sv.fit(obj, jax.random.PRNGKey(0), DEPT, MALE, APPS, ADMIT,
               optimizer=optax.adam(0.05), num_steps=50, progress=False)
    assert r.params["a_auto_loc"].shape == (3,) and np.all(np.isfinite(r.history))

    pos = np.array([0, 1, 2, 1, 0])
    ann = np.array([1.0, 2.0, 3.0, 2.5, 0.5])
    obj = estimators.elbo(dawid_skene_like, lambda *a: None)
    r = sv.fit(obj, jax.random.PRNGKey(0), pos, ann, optimizer=optax.adam(0.1),
               num_steps=300, progress=False)
    # no latent sites: the maximum-likelihood w is the mean annotation per position
    np.testing.assert_allclose(r.params["w"], [0.75, 2.25, 3.0], atol=2e-3)


def test_traced_arguments_that_must_be_concrete_are_named():
    obj = estimators.elbo(ucbadmit, AutoNormal(ucbadmit))
    with pytest.raises(TypeError, match=r"argument 'dept' \(args\[0\]\).*static_args") as e:
        sv.fit(obj, jax.random.PRNGKey(0), DEPT, MALE, APPS, ADMIT, num_steps=2,
               progress=False, static_args=False)
    assert "\n" not in str(e.value)


def test_a_latent_used_as_a_python_number_is_a_clear_error():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(0.0, float(z) + 2.0), obs=1.0)

    def guide():
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))

    with pytest.raises(TypeError, match="even with the arguments closed over"):
        sv.fit(estimators.elbo(model, guide), jax.random.PRNGKey(0), num_steps=2,
               progress=False)


def test_closed_over_arguments_resume_bit_for_bit(tmp_path):
    obj = estimators.elbo(ucbadmit, AutoNormal(ucbadmit))
    data = (DEPT, MALE, APPS, ADMIT)
    kw = dict(optimizer=optax.adam(0.05), progress=False, chunk_size=4)
    whole = sv.fit(obj, jax.random.PRNGKey(3), *data, num_steps=15, **kw)
    path = tmp_path / "fit.npz"
    sv.fit(obj, jax.random.PRNGKey(3), *data, num_steps=7, checkpoint=path, **kw)
    resumed = sv.fit(obj, jax.random.PRNGKey(3), *data, num_steps=15, resume=path, **kw)
    np.testing.assert_array_equal(resumed.history, whole.history)
    for k in whole.raw_params:
        np.testing.assert_array_equal(resumed.raw_params[k], whole.raw_params[k])
    closed = sv.fit(obj, jax.random.PRNGKey(3), *data, num_steps=15, static_args=True, **kw)
    np.testing.assert_array_equal(closed.history, whole.history)


def regression(x, y):
    w = numpyro.param("w", jnp.zeros(3))
    s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ w, s), obs=y)


def _data():
    x = jax.random.normal(jax.random.PRNGKey(1), (40, 3))
    return x, x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(
        jax.random.PRNGKey(2), (40,))


@pytest.mark.parametrize("make", [lambda: numpyro.optim.Adam(0.05),
                                  lambda: numpyro.optim.optax_to_numpyro(optax.sgd(1e-3)),
                                  lambda: numpyro.optim.ClippedAdam(0.05, clip_norm=1.0)])
@pytest.mark.slow
def test_numpyro_optim_steps_as_in_svi(make):
    x, y = _data()
    svi = SVI(regression, lambda x, y: None, make(), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    p0 = svi.optim.get_params(state.optim_state)
    losses = []
    for _ in range(30):
        state, loss = svi.update(state, x, y)
        losses.append(loss)
    r = sv.fit(estimators.elbo(regression, lambda x, y: None), jax.random.PRNGKey(0), x, y,
               optimizer=make(), num_steps=30, init_params=p0, progress=False)
    np.testing.assert_allclose(r.losses, np.array(losses), rtol=1e-5)
    fitted = svi.get_params(state)
    for k in fitted:
        np.testing.assert_allclose(r.params[k], fitted[k], rtol=1e-5, atol=1e-6)


def test_result_offers_get_params_and_evaluate():
    x, y = _data()
    obj = estimators.elbo(regression, lambda x, y: None)
    r = sv.fit(obj, jax.random.PRNGKey(0), x, y, optimizer=optax.adam(0.05), num_steps=20,
               progress=False)
    assert r.objective is obj
    np.testing.assert_array_equal(r.losses, -r.history)
    exact = obj.estimate(r.raw_params, jax.random.PRNGKey(5), x, y)
    assert float(r.evaluate(jax.random.PRNGKey(5), x, y)) == pytest.approx(float(exact))
    assert r.mutable_state is None


# --------------------------------------------------------------------------- numpyro.mutable

def _bn_model():
    import flax.linen as fnn
    from numpyro.contrib.module import flax_module

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            # no bias before BatchNorm: its gradient would be exactly zero, and Adam turns
            # float noise in a zero gradient into steps of the learning rate's size
            x = fnn.Dense(4, use_bias=False)(x)
            x = fnn.BatchNorm(use_running_average=False, momentum=0.9)(x)
            return fnn.Dense(1)(x)[..., 0]

    def model(x, y):
        net = flax_module("net", Net(), input_shape=(1, 3), mutable=["batch_stats"])
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(net(x), 1.0), obs=y)

    return model


@pytest.mark.slow
def test_mutable_state_is_threaded_as_in_svi():
    pytest.importorskip("flax")
    model, guide = _bn_model(), (lambda x, y: None)
    x = jax.random.normal(jax.random.PRNGKey(1), (50, 3)) * 2 + 1
    y = x.sum(-1)
    svi = SVI(model, guide, optax.adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    start = (svi.optim.get_params(state.optim_state), {MUTABLE: state.mutable_state})
    for _ in range(20):
        state, loss = svi.update(state, x, y)
    obj = estimators.elbo(model, guide)
    r = sv.fit(obj, jax.random.PRNGKey(0), x, y, optimizer=optax.adam(0.01), num_steps=20,
               init_params=start[0], init_state=start[1], progress=False)
    assert float(r.losses[-1]) == pytest.approx(float(loss), rel=1e-5)
    got = jax.tree_util.tree_leaves(r.mutable_state)
    want = jax.tree_util.tree_leaves(state.mutable_state)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a default start works too, and the statistics move
    r = sv.fit(obj, jax.random.PRNGKey(0), x, y, optimizer=optax.adam(0.01), num_steps=5,
               progress=False)
    init = obj.init_state(r.raw_params, jax.random.PRNGKey(0), x, y)[MUTABLE]
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(r.mutable_state), jax.tree_util.tree_leaves(init),
        strict=True)]
    assert max(moved) > 1e-3


@pytest.mark.slow
def test_mutable_state_needs_state_and_is_not_updated_with_particles():
    pytest.importorskip("flax")
    model, guide = _bn_model(), (lambda x, y: None)
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 3))
    y = x.sum(-1)
    obj = estimators.elbo(model, guide)
    params = obj.init(jax.random.PRNGKey(0), x, y)
    with pytest.raises(ValueError, match="mutable site 'net\\$state' has no state.*init_state"):
        obj.value_and_grad(params, jax.random.PRNGKey(0), x, y)
    state = obj.init_state(params, jax.random.PRNGKey(0), x, y)
    obj2 = estimators.elbo(model, guide, num_particles=2)
    with pytest.warns(UserWarning, match="not updated with several particles"):
        _, _, new = obj2.value_and_grad_with_state(params, state, jax.random.PRNGKey(0), x, y)
    for a, b in zip(jax.tree_util.tree_leaves(new[MUTABLE]),
                    jax.tree_util.tree_leaves(state[MUTABLE]), strict=True):
        np.testing.assert_array_equal(a, b)
