"""NumPyro's ``test/infer/test_gradient.py``, ported to stackvi.

Peer: pyro-ppl/numpyro, ``test/infer/test_gradient.py`` at commit
0b935d488056ae1775b4ab05cbe2812f51f21a4f. The models, guides and param values
are the peer's, unchanged; the checks are ours (``tests/peers/conftest.py``):
exact answers by brute force over every discrete configuration (or the peer's
own closed-form KL), never from stackvi or from NumPyro's estimators; each
case runs under the default strategies and under every explicit strategy for
its discrete guide sites (reinforce without baseline / 'ema' / 'loo',
enumerate, mvd).

Ported:

* ``test_gradient`` (model_0/guide_0, model_1/guide_1, model_2/guide_2): the
  peer compares ``TraceGraph_ELBO`` with ``TraceEnum_ELBO``; we compare every
  strategy with the brute-force ELBO.
* ``test_analytic_kl_1``: the eight models ``kl_model_*`` with the peer's
  enumerated guide. The peer's ``kl_sites``/``valid_kl`` axis tests NumPyro's
  ``config_kl`` (analytic KL), which stackvi does not have, so each model is one
  case per strategy (the exact answer does not depend on how KL is computed).
  The guide is ``config_enumerate``'d, so "default" is full enumeration;
  models 0-2 also run under reinforce and mvd, models 3-7 (which add a
  model-only site ``d``) under reinforce.
* ``test_analytic_kl_2``, ``test_analytic_kl_3``: mixed enumerated /
  score-function / pathwise guides; exact answer: the peer's closed-form KL;
  default, reinforce, enumerate and mvd on the discrete sites z1, z2.
* ``test_analytic_kl_4``: scale handlers and plates; exact answer: the peer's
  closed form. Two points of the peer's 2×2×2×2 grid: (z1_dim 2, z2_dim 3,
  scales 1/1) under the default strategies and (z1_dim 3, z2_dim 2, scales
  10/10) under default, enumerate and mvd for z1.

Left out: the ``kl_sites`` axis (analytic KL is a NumPyro feature with no
stackvi counterpart) and, for time (each case compiles its own estimator, ~5-30
s on a shared 2-core machine), the other 14 points of the analytic_kl_4 grid and
the 'ema'/'loo' baselines outside ``test_gradient``.
``-m "not slow"`` keeps one representative per kind of check; the rest is
``@pytest.mark.slow``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro as pyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.funsor import config_enumerate
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence
from numpyro.ops.indexing import Vindex

from stackvi import estimators
from tests.peers.conftest import check_case, exact_elbo

SIMPLEX = dist.biject_to(constraints.simplex)
STOCHASTIC = ("reinforce", "reinforce-ema", "reinforce-loo", "mvd")
ALL = ("default", *STOCHASTIC, "enumerate")




# --------------------------------------------------------------------------- test_gradient
# (the peer's models and guides, verbatim)


def model_0(data, params):
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(jnp.array([0.3, 0.7])))
        pyro.sample("x", dist.Normal(z, 1), obs=data)


def guide_0(data, params):
    probs = pyro.param("probs", params["probs"], constraint=constraints.simplex)
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(probs))


params_0 = {"probs": np.array([[0.4, 0.6], [0.5, 0.5]])}


def model_1(data, params):
    a = pyro.sample("a", dist.Categorical(jnp.array([0.3, 0.7])))
    with pyro.plate("data", len(data)):
        probs_b = jnp.array([[0.1, 0.9], [0.2, 0.8]])
        b = pyro.sample("b", dist.Categorical(probs_b[a]))
        pyro.sample("c", dist.Normal(b, 1), obs=data)


def guide_1(data, params):
    probs_a = pyro.param("probs_a", params["probs_a"], constraint=constraints.simplex)
    probs_b = pyro.param("probs_b", params["probs_b"], constraint=constraints.simplex)
    a = pyro.sample("a", dist.Categorical(probs_a))
    with pyro.plate("data", len(data)) as idx:
        pyro.sample("b", dist.Categorical(Vindex(probs_b)[a, idx]))


params_1 = {
    "probs_a": np.array([0.5, 0.5]),
    "probs_b": np.array([[[0.5, 0.5], [0.6, 0.4]], [[0.4, 0.6], [0.35, 0.65]]]),
}


def model_2(data, params):
    prob_b = jnp.array([[0.3, 0.7], [0.4, 0.6]])
    prob_c = jnp.array([[0.5, 0.5], [0.6, 0.4]])
    prob_d = jnp.array([[0.2, 0.8], [0.3, 0.7]])
    prob_e = jnp.array([[0.5, 0.5], [0.1, 0.9]])
    a = pyro.sample("a", dist.Categorical(jnp.array([0.3, 0.7])))
    with pyro.plate("data", len(data)):
        b = pyro.sample("b", dist.Categorical(prob_b[a]))
        c = pyro.sample("c", dist.Categorical(prob_c[b]))
        pyro.sample("d", dist.Categorical(prob_d[b]))
        pyro.sample("e", dist.Categorical(prob_e[c]), obs=data)


def guide_2(data, params):
    probs_a = pyro.param("probs_a", params["probs_a"], constraint=constraints.simplex)
    probs_b = pyro.param("probs_b", params["probs_b"], constraint=constraints.simplex)
    probs_c = pyro.param("probs_c", params["probs_c"], constraint=constraints.simplex)
    probs_d = pyro.param("probs_d", params["probs_d"], constraint=constraints.simplex)
    a = pyro.sample("a", dist.Categorical(probs_a))
    with pyro.plate("data", len(data)) as idx:
        b = pyro.sample("b", dist.Categorical(probs_b[a]))
        pyro.sample("c", dist.Categorical(Vindex(probs_c)[b, idx]))
        pyro.sample("d", dist.Categorical(Vindex(probs_d)[b, idx]))


params_2 = {
    "probs_a": np.array([0.5, 0.5]),
    "probs_b": np.array([[0.4, 0.6], [0.3, 0.7]]),
    "probs_c": np.array([[[0.3, 0.7], [0.8, 0.2]], [[0.2, 0.8], [0.5, 0.5]]]),
    "probs_d": np.array([[[0.2, 0.8], [0.9, 0.1]], [[0.1, 0.9], [0.4, 0.6]]]),
}

GRADIENT_CASES = {
    "model_0": (model_0, guide_0, params_0, np.array([-0.5, 2.0]), ["z"]),
    "model_1": (model_1, guide_1, params_1, np.array([-0.5, 2.0]), ["a", "b"]),
    "model_2": (model_2, guide_2, params_2, np.array([0, 1]), ["a", "b", "c", "d"]),
}



#: the default (not slow) run: one representative per kind of check
FAST = {
    ("model_1", "default"), ("model_1", "enumerate"),
    ("kl_model_4_z3", "reinforce"), ("kl_2", "default"),
    ((3, 2, 10, 10), "default"),
}


def _params(cases, strategies=ALL):
    out = []
    for case in cases:
        for s in strategies:
            marks = [] if (case, s) in FAST else [pytest.mark.slow]
            out.append(pytest.param(case, s, marks=marks, id=f"{case}-{s}"))
    return out


_EXACT: dict = {}


def _exact(key, model, guide, args, init):
    """The brute-force exact ELBO of a case, built once for all its strategies."""
    if key not in _EXACT:
        _EXACT[key] = exact_elbo(model, guide, args, params=init)
    return _EXACT[key]


@pytest.mark.parametrize("case,strategy", _params(GRADIENT_CASES))
@pytest.mark.slow
def test_gradient(case, strategy):
    model, guide, params, data, sites = GRADIENT_CASES[case]
    args = (data, params)


    init = estimators.elbo(model, guide).init(jax.random.PRNGKey(0), *args)
    exact = _exact(case, model, guide, args, init)
    check_case(model, guide, args, strategy, sites, exact=exact, params=init)


# --------------------------------------------------------------------------- test_analytic_kl_1


def kl_model_0_z1z2z3(params):
    probs_z1 = jnp.array([0.5, 0.5])
    probs_z2 = jnp.array([0.7, 0.3])
    probs_z3 = jnp.array([0.8, 0.2])
    pyro.sample("z1", dist.Categorical(probs_z1))
    pyro.sample("z2", dist.Categorical(probs_z2))
    pyro.sample("z3", dist.Categorical(probs_z3))


def kl_model_1_z1z2z3(params):
    probs_z1 = jnp.array([0.5, 0.5])
    probs_z2 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    probs_z3 = jnp.array([[[0.4, 0.6], [0.1, 0.9]], [[0.7, 0.3], [0.2, 0.8]]])
    z1 = pyro.sample("z1", dist.Categorical(probs_z1))
    z2 = pyro.sample("z2", dist.Categorical(probs_z2[z1]))
    pyro.sample("z3", dist.Categorical(probs_z3[z1, z2]))


def kl_model_2_z2z3(params):
    probs_z2 = jnp.array([0.5, 0.5])
    probs_z1 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    probs_z3 = jnp.array([[[0.4, 0.6], [0.1, 0.9]], [[0.7, 0.3], [0.2, 0.8]]])
    z2 = pyro.sample("z2", dist.Categorical(probs_z2))
    z1 = pyro.sample("z1", dist.Categorical(probs_z1[z2]))
    pyro.sample("z3", dist.Categorical(probs_z3[z1, z2]))


@config_enumerate
def kl_model_3_z2z3(params):
    probs_d = jnp.array([0.5, 0.5])
    probs_z1 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    probs_z2 = jnp.array([0.7, 0.3])
    probs_z3 = jnp.array([0.8, 0.2])
    d = pyro.sample("d", dist.Categorical(probs_d))
    pyro.sample("z1", dist.Categorical(probs_z1[d]))
    pyro.sample("z2", dist.Categorical(probs_z2))
    pyro.sample("z3", dist.Categorical(probs_z3))


@config_enumerate
def kl_model_4_z3(params):
    probs_d = jnp.array([0.5, 0.5])
    probs_z1 = jnp.array([[0.5, 0.5], [0.2, 0.8]])
    probs_z2 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    probs_z3 = jnp.array([0.8, 0.2])
    d = pyro.sample("d", dist.Categorical(probs_d))
    pyro.sample("z1", dist.Categorical(probs_z1[d]))
    pyro.sample("z2", dist.Categorical(probs_z2[d]))
    pyro.sample("z3", dist.Categorical(probs_z3))


@config_enumerate
def kl_model_5_z2(params):
    probs_d = jnp.array([0.5, 0.5])
    probs_z1 = jnp.array([[0.5, 0.5], [0.2, 0.8]])
    probs_z2 = jnp.array([0.8, 0.2])
    probs_z3 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    d = pyro.sample("d", dist.Categorical(probs_d))
    pyro.sample("z1", dist.Categorical(probs_z1[d]))
    pyro.sample("z2", dist.Categorical(probs_z2))
    pyro.sample("z3", dist.Categorical(probs_z3[d]))


@config_enumerate
def kl_model_6_(params):
    probs_d = jnp.array([0.5, 0.5])
    probs_z1 = jnp.array([[0.5, 0.5], [0.2, 0.8]])
    probs_z2 = jnp.array([[0.1, 0.9], [0.3, 0.7]])
    probs_z3 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    d = pyro.sample("d", dist.Categorical(probs_d))
    pyro.sample("z1", dist.Categorical(probs_z1[d]))
    pyro.sample("z2", dist.Categorical(probs_z2[d]))
    pyro.sample("z3", dist.Categorical(probs_z3[d]))


@config_enumerate
def kl_model_7_z3(params):
    probs_d = jnp.array([0.5, 0.5])
    probs_z1 = jnp.array([[0.5, 0.5], [0.2, 0.8]])
    probs_z2 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    probs_z3 = jnp.array([[0.8, 0.2], [0.6, 0.4]])
    d = pyro.sample("d", dist.Categorical(probs_d))
    pyro.sample("z1", dist.Categorical(probs_z1[d]))
    z2 = pyro.sample("z2", dist.Categorical(probs_z2[d]))
    pyro.sample("z3", dist.Categorical(probs_z3[z2]))


@config_enumerate
def kl_guide(params):
    probs_z1 = pyro.param("probs_z1", params["probs_z1"], constraint=constraints.simplex)
    probs_z2 = pyro.param("probs_z2", params["probs_z2"], constraint=constraints.simplex)
    probs_z3 = pyro.param("probs_z3", params["probs_z3"], constraint=constraints.simplex)
    z1 = pyro.sample("z1", dist.Categorical(probs_z1))
    z2 = pyro.sample("z2", dist.Categorical(probs_z2[z1]))
    pyro.sample("z3", dist.Categorical(probs_z3[z1, z2]))


KL_PARAMS = {
    "probs_z1": jnp.array([0.3, 0.7]),
    "probs_z2": jnp.array([[0.4, 0.6], [0.5, 0.5]]),
    "probs_z3": jnp.array([[[0.4, 0.6], [0.5, 0.5]], [[0.7, 0.3], [0.9, 0.1]]]),
}

KL_MODELS = {m.__name__: m for m in (
    kl_model_0_z1z2z3, kl_model_1_z1z2z3, kl_model_2_z2z3, kl_model_3_z2z3,
    kl_model_4_z3, kl_model_5_z2, kl_model_6_, kl_model_7_z3)}



def _kl1_params():
    out = []
    for i, case in enumerate(KL_MODELS):
        # the guide is config_enumerate'd: "default" enumerates every site, like "enumerate"
        out += _params([case], ("default", "reinforce", "mvd") if i < 3
                       else ("default", "reinforce"))
    return out


@pytest.mark.parametrize("case,strategy", _kl1_params())
@pytest.mark.slow
def test_analytic_kl_1(case, strategy):
    model = KL_MODELS[case]
    args = (KL_PARAMS,)


    init = estimators.elbo(model, kl_guide).init(jax.random.PRNGKey(0), *args)
    exact = _exact(case, model, kl_guide, args, init)
    # default: the guide is config_enumerate'd, so every guide site is enumerated
    check_case(model, kl_guide, args, strategy, ["z1", "z2", "z3"], exact=exact,
               params=init, is_exact=strategy in ("default", "enumerate"))


# --------------------------------------------------------------------------- test_analytic_kl_2/3


def kl2_model(params):
    probs_z1 = jnp.array([0.2, 0.8])
    probs_z2 = jnp.array([[0.4, 0.6], [0.6, 0.4]])
    probs_z3 = jnp.array([[0.3, 0.5], [1.5, 0.0]])
    z1 = pyro.sample("z1", dist.Categorical(probs_z1))
    z2 = pyro.sample("z2", dist.Categorical(probs_z2[z1]))
    pyro.sample("z3", dist.Normal(probs_z3[z2, z1], 1))


def kl3_model(params):
    probs_z1 = jnp.array([0.2, 0.8])
    probs_z2 = jnp.array([0.4, 0.6])
    probs_z3 = jnp.array(0.3)
    pyro.sample("z1", dist.Categorical(probs_z1))
    pyro.sample("z2", dist.Categorical(probs_z2))
    pyro.sample("z3", dist.Normal(probs_z3, 1))


def kl23_guide(params):
    probs_z1 = pyro.param("probs_z1", params["probs_z1"], constraint=constraints.simplex)
    probs_z2 = pyro.param("probs_z2", params["probs_z2"], constraint=constraints.simplex)
    probs_z3 = pyro.param("probs_z3", params["probs_z3"])
    z1 = pyro.sample("z1", dist.Categorical(probs_z1), infer={"enumerate": "parallel"})
    z2 = pyro.sample("z2", dist.Categorical(probs_z2[z1]))
    pyro.sample("z3", dist.Normal(probs_z3[z2, z1], 1), infer={"kl": "analytic"})


KL23_PARAMS = {
    "probs_z1": jnp.array([0.3, 0.7]),
    "probs_z2": jnp.array([[0.4, 0.6], [0.5, 0.5]]),
    "probs_z3": jnp.array([[0.0, 0.5], [0.5, 1.0]]),
}

# the peer's closed forms (model probabilities of each variant)
KL23_PRIOR = {
    "kl_2": (jnp.array([0.2, 0.8]), jnp.array([[0.4, 0.6], [0.6, 0.4]]),
             jnp.array([[0.3, 0.5], [1.5, 0.0]])),
    "kl_3": (jnp.array([0.2, 0.8]), jnp.array([0.4, 0.6]), jnp.array(0.3)),
}
KL23_MODELS = {"kl_2": kl2_model, "kl_3": kl3_model}


def kl23_exact_elbo(variant):
    p1, p2, p3 = KL23_PRIOR[variant]

    def elbo(params_raw):  # = −(the peer's expected_loss_fn)
        params = {
            "probs_z1": SIMPLEX(params_raw["probs_z1"]),
            "probs_z2": SIMPLEX(params_raw["probs_z2"]),
            "probs_z3": params_raw["probs_z3"],
        }
        kl_z1 = kl_divergence(dist.Categorical(params["probs_z1"]), dist.Categorical(p1))
        kl_z2 = kl_divergence(dist.Categorical(params["probs_z2"]), dist.Categorical(p2))
        kl_z3 = kl_divergence(dist.Normal(params["probs_z3"], 1), dist.Normal(p3, 1))
        return -(jnp.sum(kl_z1) + jnp.sum(params["probs_z1"] * kl_z2)
                 + jnp.sum((params["probs_z1"] * params["probs_z2"].T) * kl_z3))

    return elbo




@pytest.mark.parametrize("case,strategy", _params(KL23_MODELS,
                                     ("default", "reinforce", "enumerate", "mvd")))
@pytest.mark.slow
def test_analytic_kl_2_3(case, strategy):
    model = KL23_MODELS[case]
    args = (KL23_PARAMS,)


    init = estimators.elbo(model, kl23_guide).init(jax.random.PRNGKey(0), *args)
    value, grads = jax.value_and_grad(kl23_exact_elbo(case))(init)
    check_case(model, kl23_guide, args, strategy, ["z1", "z2"], exact_value=value,
               exact_grads=grads, params=init, is_exact=False)


# --------------------------------------------------------------------------- test_analytic_kl_4


def make_kl4(z1_dim, z2_dim, scale1, scale2):
    @handlers.scale(scale=scale1)
    def model(params):
        with handlers.scale(scale=scale2):
            with pyro.plate("z1_axis", z1_dim):
                pyro.sample("z1", dist.Categorical(jnp.array([0.5, 0.5])))
        with pyro.plate("z2_axis", z2_dim):
            pyro.sample("z2", dist.Normal(0.0, 1.0))

    @handlers.scale(scale=scale1)
    def guide(params):
        probs_z1 = pyro.param("probs_z1", params["probs_z1"], constraint=constraints.simplex)
        probs_z2 = pyro.param("probs_z2", params["probs_z2"])
        with handlers.scale(scale=scale2):
            with pyro.plate("z1_axis", z1_dim):
                pyro.sample("z1", dist.Categorical(probs_z1))
        with pyro.plate("z2_axis", z2_dim):
            pyro.sample("z2", dist.Normal(probs_z2, 1.0))

    def exact(params_raw):  # = −(the peer's expected_loss_fn)
        params = {"probs_z1": SIMPLEX(params_raw["probs_z1"]), "probs_z2": params_raw["probs_z2"]}
        kl_z1 = kl_divergence(dist.Categorical(params["probs_z1"]),
                              dist.Categorical(jnp.array([0.5, 0.5])))
        kl_z2 = kl_divergence(dist.Normal(params["probs_z2"]), dist.Normal(jnp.array(0.0)))
        return -scale1 * (scale2 * z1_dim * kl_z1 + z2_dim * kl_z2)

    return model, guide, exact


KL4_PARAMS = {"probs_z1": jnp.array([0.3, 0.7]), "probs_z2": jnp.array(0.0)}
KL4_FULL = {(3, 2, 10, 10)}  # default, enumerate, mvd; (2, 3, 1, 1): default


def _kl4_params():
    out = []
    for combo in ((2, 3, 1, 1), (3, 2, 10, 10)):
        for s in ("default", "enumerate", "mvd") if combo in KL4_FULL else ("default",):
            marks = [] if (combo, s) in FAST else [pytest.mark.slow]
            out.append(pytest.param(combo, s, marks=marks,
                                    id="z1dim{}-z2dim{}-scale1_{}-scale2_{}-".format(*combo) + s))
    return out


@pytest.mark.parametrize("combo,strategy", _kl4_params())
def test_analytic_kl_4(combo, strategy):
    model, guide, exact = make_kl4(*combo)
    args = (KL4_PARAMS,)


    init = estimators.elbo(model, guide).init(jax.random.PRNGKey(0), *args)
    value, grads = jax.value_and_grad(exact)(init)
    check_case(model, guide, args, strategy, ["z1"], exact_value=value, exact_grads=grads,
               params=init, is_exact=False)
