"""RELAX (learned control variate, trained on the variance) against exact enumeration."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

from stackvi import estimators, handlers
from stackvi.gradients import surrogate
from tests.conftest import assert_lower_variance, assert_unbiased, per_key

N = 20000


def _lq(logits, v):
    # log Bernoulli(v; σ(logits)) written out: NumPyro's own form has a wrong gradient at 0
    return v * logits - jax.nn.softplus(logits)


def _normal(x, mu, sd):
    return -0.5 * jnp.log(2 * jnp.pi * sd**2) - (x - mu) ** 2 / (2 * sd**2)


_TRAINED: dict = {}


def train_phi(obj, params, steps=300, lr=0.05, seed=7):
    """Adam on the control variate's params only (θ fixed), by Objective.value_and_grad.

    Compiled once per objective and step count (tests share their objectives)."""
    phi = sorted(k for k in params if k.startswith("relax:"))
    entry = _TRAINED.get((id(obj), steps))
    if entry is None or entry[0] is not obj:
        opt = optax.adam(lr)

        def step(carry, key):
            p, s = carry
            _, g = obj.value_and_grad(p, key)
            upd, s = opt.update({k: -g[k] for k in phi}, s)
            return ({**p, **optax.apply_updates({k: p[k] for k in phi}, upd)}, s), None

        def run(params, keys):
            init = (params, opt.init({k: params[k] for k in phi}))
            return jax.lax.scan(step, init, keys)[0][0]

        entry = _TRAINED[(id(obj), steps)] = (obj, jax.jit(run))
    return entry[1](params, jax.random.split(jax.random.PRNGKey(seed), steps))


def check(obj, params, exact_fn, names, what):
    values, grads = per_key(obj, params, N)
    exact_value, exact_grads = exact_fn()
    assert_unbiased(values, exact_value, f"{what}: ELBO")
    for n in names:
        assert_unbiased(grads[n], exact_grads[n], f"{what}: d/d{n}")
    return grads


# --------------------------------------------------------------------------- one site

def model1():
    b = numpyro.sample("b", dist.Bernoulli(0.3))
    numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=1.5)


def guide1():
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", 0.0)))  # logits at 0


def exact1(a):
    out = 0.0
    for b in (0.0, 1.0):
        lq = _lq(a, b)
        lp = jnp.log(jnp.where(b == 1.0, 0.3, 0.7)) + _normal(1.5, 2.0 * b, 1.0)
        out = out + jnp.exp(lq) * (lp - lq)
    return out


P1 = {"a": jnp.array(0.0)}
OBJ1 = estimators.elbo(model1, handlers.relax(guide1))


@pytest.mark.parametrize("trained", [False, True])
def test_single_site_unbiased(trained):
    obj = OBJ1
    params = {**obj.init(jax.random.PRNGKey(0)), **P1}
    if trained:
        params = train_phi(obj, params)
    check(obj, params, lambda: (exact1(P1["a"]), {"a": jax.grad(exact1)(P1["a"])}), ["a"],
          f"one site, trained={trained}")


# --------------------------------------------------------------------------- a plate

X3 = jnp.array([1.2, -0.4, 2.1])


def model_plate():
    with numpyro.plate("i", 3):
        b = numpyro.sample("b", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(1.5 * b, 1.0), obs=X3)


def guide_plate():
    with numpyro.plate("i", 3):
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", jnp.array([0.4, -0.7, 1.1]))))


def exact_plate(a):
    out = 0.0
    for bs in itertools.product([0.0, 1.0], repeat=3):
        b = jnp.array(bs)
        lq = jnp.sum(_lq(a, b))
        lp = jnp.sum(jnp.log(jnp.where(b == 1.0, 0.4, 0.6)) + _normal(X3, 1.5 * b, 1.0))
        out = out + jnp.exp(lq) * (lp - lq)
    return out


PP = {"a": jnp.array([0.4, -0.7, 1.1])}
OBJP = estimators.elbo(model_plate, handlers.relax(guide_plate))


@pytest.mark.parametrize("trained", [False, True])
def test_plate_unbiased(trained):
    obj = OBJP
    params = {**obj.init(jax.random.PRNGKey(0)), **PP}
    if trained:
        params = train_phi(obj, params)
    check(obj, params, lambda: (exact_plate(PP["a"]), {"a": jax.grad(exact_plate)(PP["a"])}),
          ["a"], f"plate, trained={trained}")


# --------------------------------------------------------------------------- dependent sites

def model_dep():
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    c = numpyro.sample("c", dist.Bernoulli(0.4))
    numpyro.sample("x", dist.Normal(c + 0.5 * b + b * c, 1.0), obs=1.7)


def guide_dep():
    b = numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("ab", 0.3)))
    numpyro.sample("c", dist.Bernoulli(logits=numpyro.param("ac", -0.3) + 1.5 * b))


def exact_dep(ab, ac):
    out = 0.0
    for b, c in itertools.product([0.0, 1.0], repeat=2):
        lq = _lq(ab, b) + _lq(ac + 1.5 * b, c)
        lp = (jnp.log(0.5) + jnp.log(jnp.where(c == 1.0, 0.4, 0.6))
              + _normal(1.7, c + 0.5 * b + b * c, 1.0))
        out = out + jnp.exp(lq) * (lp - lq)
    return out


PD = {"ab": jnp.array(0.3), "ac": jnp.array(-0.3)}
OBJD = estimators.elbo(model_dep, handlers.relax(guide_dep))


@pytest.mark.parametrize("trained", [False, True])
def test_dependent_sites_unbiased(trained):
    obj = OBJD
    params = {**obj.init(jax.random.PRNGKey(0)), **PD}
    if trained:
        params = train_phi(obj, params)

    def exact():
        gb, gc = jax.grad(exact_dep, argnums=(0, 1))(PD["ab"], PD["ac"])
        return exact_dep(PD["ab"], PD["ac"]), {"ab": gb, "ac": gc}

    check(obj, params, exact, ["ab", "ac"], f"dependent sites, trained={trained}")


@pytest.mark.parametrize("config", [{"relax": ["b"], "enumerate": ["c"]},
                                    {"enumerate": ["b"], "relax": ["c"]}],
                         ids=["enumerated-downstream", "enumerated-upstream"])
def test_next_to_an_enumerated_site_unbiased(config):
    obj = estimators.elbo(model_dep, handlers.strategies(guide_dep, config))
    params = {**obj.init(jax.random.PRNGKey(0)), **PD}
    params = {k: (jnp.linspace(-0.5, 0.5, v.size).reshape(v.shape) if k.endswith("w2") else v)
              for k, v in params.items()}  # a nonzero control variate

    def exact():
        gb, gc = jax.grad(exact_dep, argnums=(0, 1))(PD["ab"], PD["ac"])
        return exact_dep(PD["ab"], PD["ac"]), {"ab": gb, "ac": gc}

    check(obj, params, exact, ["ab", "ac"], f"with enumerate: {config}")


# --------------------------------------------------------------------------- with a pathwise site

def model_cont():
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Bernoulli(0.4))
    numpyro.sample("x", dist.Normal(z + b, 1.0), obs=1.3)


def guide_cont():
    m = numpyro.param("m", 0.2)
    s = numpyro.param("s", 0.8, constraint=dist.constraints.positive)
    z = numpyro.sample("z", dist.Normal(m, s))
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", -0.2) + 0.5 * z))


def exact_cont(m, log_s, a):
    """Gauss–Hermite over z (64 nodes: exact to float precision for this smooth integrand)."""
    x, w = np.polynomial.hermite_e.hermegauss(64)
    s = jnp.exp(log_s)
    z = m + s * jnp.asarray(x)
    w = jnp.asarray(w / np.sqrt(2 * np.pi))
    out = 0.0
    for b in (0.0, 1.0):
        lq = _lq(a + 0.5 * z, b)
        lp = jnp.log(jnp.where(b == 1.0, 0.4, 0.6)) + _normal(1.3, z + b, 1.0)
        out = out + jnp.exp(lq) * (lp - lq)
    return jnp.sum(w * (out + _normal(z, 0.0, 1.0) - _normal(z, m, s)))


OBJC = estimators.elbo(model_cont, handlers.relax(guide_cont, sites=["b"]))


@pytest.mark.slow
@pytest.mark.parametrize("trained", [False, True])
def test_with_pathwise_site_unbiased(trained):
    obj = OBJC
    params = obj.init(jax.random.PRNGKey(0))
    if trained:
        params = train_phi(obj, params)
    args = (params["m"], params["s"], params["a"])  # s: unconstrained (log)

    def exact():
        gm, gs, ga = jax.grad(exact_cont, argnums=(0, 1, 2))(*args)
        return exact_cont(*args), {"m": gm, "s": gs, "a": ga}

    check(obj, params, exact, ["m", "s", "a"], f"pathwise site, trained={trained}")


# --------------------------------------------------------------------------- the mechanism

def test_other_params_get_the_surrogate_gradient_and_phi_the_variance_gradient():
    """θ's entries are the plain surrogate's gradient; φ's are −∇φ‖ĝ_θ‖² (finite differences)."""
    obj = OBJD
    params = train_phi(obj, {**obj.init(jax.random.PRNGKey(0)), **PD})
    key = jax.random.PRNGKey(3)
    theta = ["ab", "ac"]

    @jax.jit
    def g_theta(p):
        def sur(q):
            value, records = obj.run(q, key)
            return surrogate(value, records)[1]
        g = jax.grad(sur)(p)
        return jnp.stack([g[k] for k in theta])

    _, grads = jax.jit(obj.value_and_grad)(params, key)
    np.testing.assert_allclose(np.stack([grads[k] for k in theta]), g_theta(params), rtol=1e-6)
    for name, idx in [("relax:b:b2", ()), ("relax:c:w2", (3,)), ("relax:b:w1", (10,))]:
        eps = 1e-2
        e = jnp.zeros_like(params[name]).at[idx].set(eps)
        up = jnp.sum(g_theta({**params, name: params[name] + e}) ** 2)
        down = jnp.sum(g_theta({**params, name: params[name] - e}) ** 2)
        fd = -(up - down) / (2 * eps)
        np.testing.assert_allclose(grads[name][idx], fd, rtol=2e-2, atol=1e-4)


def test_variance_after_training_below_reinforce_and_report():
    """Trained φ: per-entry variance of d/dab, d/dac vs REINFORCE (no baseline) and DisARM."""
    relax_obj = OBJD
    init = {**relax_obj.init(jax.random.PRNGKey(0)), **PD}
    trained = train_phi(relax_obj, init)
    n = N
    _, g_init = per_key(relax_obj, init, n, seed=1)
    _, g_trained = per_key(relax_obj, trained, n, seed=1)
    _, g_rf = per_key(estimators.elbo(model_dep, handlers.reinforce(guide_dep)), PD, n, seed=1)
    _, g_da = per_key(estimators.elbo(model_dep, handlers.disarm(guide_dep)), PD, n, seed=1)
    report = {}
    for k in ["ab", "ac"]:
        report[k] = {name: float(np.var(np.asarray(g[k]))) for name, g in
                     [("relax untrained", g_init), ("relax trained", g_trained),
                      ("reinforce", g_rf), ("disarm", g_da)]}
        assert_lower_variance(g_trained[k], g_rf[k], f"d/d{k}: trained relax vs reinforce")
        assert_lower_variance(g_trained[k], g_init[k], f"d/d{k}: trained vs untrained relax")
    print(report)


# --------------------------------------------------------------------------- claims and errors

def test_claimed_by_name_and_options():
    by_name = handlers.strategies(guide_dep, {"relax": ["b", "c"]}, relax={"hidden": 3})
    obj = estimators.elbo(model_dep, by_name)
    params = obj.init(jax.random.PRNGKey(0))
    assert params["relax:b:w1"].shape == (3,) and "relax:c:b2" in params
    conf = handlers.configure(guide_dep, lambda s: "relax" if s["name"] == "b" else None)
    obj = estimators.elbo(model_dep, conf)
    params = obj.init(jax.random.PRNGKey(0))
    assert sorted(k for k in params if k.startswith("relax:")) == [
        "relax:b:b1", "relax:b:b2", "relax:b:w1", "relax:b:w2"]
    _, g = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1))
    assert np.isfinite(float(g["relax:b:w2"].sum())) and float(jnp.abs(g["ab"])) > 0


def test_user_control_variate_over_the_event():
    """A control variate over the site's event (one value per element), with its own param."""
    def cv(z, site):
        w = numpyro.param("my_cv", jnp.zeros(2))
        return jnp.tanh(z) @ w

    def guide():
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", jnp.array([0.3, -0.5])))
                       .to_event(1))

    def model():
        b = numpyro.sample("b", dist.Bernoulli(0.4).expand([2]).to_event(1))
        numpyro.sample("x", dist.Normal(b[0] + 2 * b[0] * b[1], 1.0), obs=1.0)

    def exact(a):
        out = 0.0
        for b0, b1 in itertools.product([0.0, 1.0], repeat=2):
            b = jnp.array([b0, b1])
            lq = jnp.sum(_lq(a, b))
            lp = jnp.sum(jnp.log(jnp.where(b == 1.0, 0.4, 0.6))) + _normal(1.0, b0 + 2 * b0 * b1,
                                                                            1.0)
            out = out + jnp.exp(lq) * (lp - lq)
        return out

    obj = estimators.elbo(model, handlers.relax(guide, control_variate=cv))
    params = obj.init(jax.random.PRNGKey(0))
    params = {**params, "my_cv": jnp.array([0.8, -0.5])}
    a = params["a"]
    _, grads = per_key(obj, params, N)
    assert_unbiased(grads["a"], jax.grad(exact)(a), "event-level control variate: d/da")
    assert np.all(np.isfinite(np.asarray(grads["my_cv"])))  # trained on the variance


def test_refuses_non_bernoulli_naming_site_and_distribution():
    def g():
        numpyro.sample("z", dist.Poisson(2.0))

    obj = estimators.elbo(lambda: numpyro.sample("z", dist.Poisson(1.0)), handlers.relax(g))
    with pytest.raises(ValueError, match=r"'z' \(Poisson\) is not a Bernoulli"):
        obj.init(jax.random.PRNGKey(0))


def test_infer_dict_claim_with_the_default_control_variate_is_refused():
    def g():
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", 0.1)),
                       infer={"strategy": "relax"})

    obj = estimators.elbo(model1, g)
    with pytest.raises(ValueError, match="'b'.*claimed by relax in its infer dict"):
        obj.estimate(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))


def test_missing_control_variate_params_are_a_clear_error():
    obj = estimators.elbo(model1, handlers.relax(guide1))
    with pytest.raises(ValueError,
                       match="'b'.*control variate's parameter 'relax:b:w1' is not in params"):
        obj.value_and_grad({"a": jnp.array(0.0)}, jax.random.PRNGKey(1))


def test_higher_order_surrogate_is_refused():
    obj = estimators.elbo(model1, handlers.relax(guide1))
    params = obj.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="'b'.*first derivatives only"):
        obj.surrogate(params, jax.random.PRNGKey(1))


def test_masked_elements_get_no_gradient():
    def guide():
        with numpyro.plate("i", 3), handlers.mask(mask=jnp.array([True, False, True])):
            numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", jnp.zeros(3))))

    def model():
        with numpyro.plate("i", 3), handlers.mask(mask=jnp.array([True, False, True])):
            b = numpyro.sample("b", dist.Bernoulli(0.4))
            numpyro.sample("x", dist.Normal(b, 1.0), obs=X3)

    obj = estimators.elbo(model, handlers.relax(guide))
    params = {**obj.init(jax.random.PRNGKey(0)), "relax:b:w2": jnp.linspace(-1, 1, 16)}
    _, grads = per_key(obj, params, 64)
    assert np.all(np.asarray(grads["a"])[:, 1] == 0.0)
    assert np.any(np.asarray(grads["a"])[:, 0] != 0.0)
