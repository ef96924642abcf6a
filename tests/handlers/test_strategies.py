"""Strategy claims: who wins, how sites are selected, the default, and what each strategy does.

The *effect* of a claim is checked, not only the label: a ``reinforce`` site's
value carries no gradient and registers a score-function node; a ``reparam``
site's value is differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed

from stackvi import baselines
from stackvi.gradients.records import _RECORDERS, recording
from stackvi.handlers import configure, reinforce, reparam, simulate, strategies


def guide(loc=0.0, infer=None):
    numpyro.sample("b", dist.Bernoulli(0.3))
    numpyro.sample("z", dist.Normal(loc, 1.0), infer=infer or {})
    with numpyro.plate("data", 3):
        numpyro.sample("w", dist.Normal(loc, 1.0))


def strategy_of(fn, *args, **kwargs):
    tr = simulate(seed(fn, 0), *args, **kwargs)
    return {n: s["infer"]["strategy"] for n, s in tr.items() if s["type"] == "sample"}


# --------------------------------------------------------------------------- innermost claim wins


def test_infer_dict_beats_inner_wrapper_beats_outer_wrapper():
    inner = reinforce(guide, sites=["z", "w"])
    outer = reparam(inner, sites=["z", "w"])
    assert strategy_of(outer) == {"b": "reinforce", "z": "reinforce", "w": "reinforce"}
    # the site's own infer dict is the innermost claim of all
    g = lambda: guide(infer={"strategy": "reparam"})
    assert strategy_of(reparam(reinforce(g, sites=["z"]), sites=["z"]))["z"] == "reparam"
    assert strategy_of(reinforce(g, sites=["z"]))["z"] == "reparam"
    # and the opposite nesting gives the opposite answer
    assert strategy_of(reinforce(reparam(guide, sites=["z"]), sites=["z"]))["z"] == "reparam"


def test_context_manager_around_simulate_claims():
    with reinforce(sites=["z"]):
        assert strategy_of(guide)["z"] == "reinforce"
    with reparam(sites=["z"]), reinforce(sites=["z"]):  # reinforce is the inner one
        assert strategy_of(guide)["z"] == "reinforce"
    # a wrapper inside simulate is inner to a context manager outside it
    with reinforce(sites=["w"]):
        assert strategy_of(reparam(guide, sites=["w"]))["w"] == "reparam"


@pytest.mark.slow
def test_context_manager_around_an_objective_equals_the_wrapper():
    from stackvi import estimators

    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(numpyro.sample("w", dist.Normal(0.0, 1.0)), 1.0), obs=0.5)

    def g():
        numpyro.sample("z", dist.Normal(numpyro.param("m", 0.3), 1.0))
        numpyro.sample("w", dist.Normal(numpyro.param("n", 0.1), 1.0))

    params = {"m": jnp.float32(0.3), "n": jnp.float32(0.1)}
    key = jax.random.PRNGKey(5)
    wrapped = estimators.elbo(model, reinforce(g, sites=["z"])).value_and_grad(params, key)
    plain = estimators.elbo(model, g)
    with reinforce(sites=["z"]):
        in_context = plain.value_and_grad(params, key)
    pathwise = plain.value_and_grad(params, key)
    for k in ("m", "n"):
        assert float(in_context[1][k]) == pytest.approx(float(wrapped[1][k]), rel=1e-6)
    assert float(in_context[1]["m"]) != pytest.approx(float(pathwise[1]["m"]), rel=1e-3)


def test_strategies_one_site_two_strategies_raises_naming_the_site():
    with pytest.raises(ValueError, match=r"site 'z' is claimed by both 'reinforce' and 'reparam'"):
        strategies(guide, {"reinforce": ["z", "b"], "reparam": ["z"]})
    with pytest.raises(ValueError, match=r"unknown strategy 'pathwise'"):
        strategies(guide, {"pathwise": ["z"]})


def test_strategies_claims_and_options():
    g = strategies(guide, {"reinforce": ["z"], "reparam": "w"}, reinforce={"baseline": "ema"})
    with recording() as rec:
        got = strategy_of(g)
    assert got == {"b": "reinforce", "z": "reinforce", "w": "reparam"}
    by_label = {n.name: n for n in rec.records}
    assert isinstance(by_label["z"].baseline, baselines.MovingAverage)
    assert by_label["b"].baseline is None  # claimed by the default, no options


def test_configure_by_function():
    def choose(site):
        if site["name"] == "z":
            return "reinforce"
        if site["name"] == "w":
            return ("reinforce", {"baseline": "ema"})
        return None  # fall through to the default

    with recording() as rec:
        got = strategy_of(configure(guide, choose))
    assert got == {"b": "reinforce", "z": "reinforce", "w": "reinforce"}
    assert isinstance({n.name: n for n in rec.records}["w"].baseline, baselines.MovingAverage)
    with pytest.raises(ValueError, match=r"unknown strategy 'mvdd' for site 'z'"):
        strategy_of(configure(guide, lambda s: "mvdd" if s["name"] == "z" else None))
    with pytest.raises(ValueError, match="config_fn"):
        configure(guide)


@pytest.mark.parametrize(
    "sites",
    [["z"], "z", lambda site: site["name"] == "z",
     lambda site: site["fn"].batch_shape == () and site["fn"].has_rsample],
    ids=["list", "str", "predicate-name", "predicate-dist"],
)
def test_sites_selector_forms(sites):
    assert strategy_of(reinforce(guide, sites=sites)) == {
        "b": "reinforce", "z": "reinforce", "w": "reparam"}


def test_unknown_strategy_in_infer_dict_names_the_site():
    with pytest.raises(ValueError, match=r"site 'z' asks for unknown strategy 'magic'"):
        strategy_of(lambda: guide(infer={"strategy": "magic"}))


def test_shared_infer_dict_is_not_mutated():
    shared = {}

    def g():
        numpyro.sample("a", dist.Normal(0.0, 1.0), infer=shared)
        numpyro.sample("c", dist.Normal(0.0, 1.0), infer=shared)

    assert strategy_of(reinforce(g, sites=["a"])) == {"a": "reinforce", "c": "reparam"}
    assert shared == {}


def test_observed_and_substituted_sites_are_not_claimed():
    def g():
        numpyro.sample("o", dist.Normal(0.0, 1.0), obs=1.0)
        numpyro.sample("s", dist.Bernoulli(0.5))

    with recording() as rec:
        tr = simulate(seed(numpyro.handlers.substitute(reinforce(g), {"s": 1.0}), 0))
    assert "strategy" not in tr["o"]["infer"]
    assert "_stackvi_sampled" not in tr["s"]["infer"]
    assert rec.records == []


# --------------------------------------------------------------------------- the default


DISTS = {
    "Normal": dist.Normal(0.0, 1.0),
    "Gamma": dist.Gamma(2.0, 1.0),
    "Beta": dist.Beta(2.0, 3.0),
    "Dirichlet": dist.Dirichlet(jnp.ones(3)),
    "LogNormal": dist.LogNormal(0.0, 1.0),
    "Bernoulli": dist.Bernoulli(0.4),
    "Categorical": dist.Categorical(jnp.array([0.2, 0.3, 0.5])),
    "Poisson": dist.Poisson(2.0),
    "Binomial": dist.Binomial(5, 0.3),
}
RSAMPLE = {"Normal", "Gamma", "Beta", "Dirichlet", "LogNormal"}


@pytest.mark.parametrize("name", sorted(DISTS))
@pytest.mark.slow
def test_default_is_reparam_iff_has_rsample(name):
    d = DISTS[name]
    assert d.has_rsample == (name in RSAMPLE)  # the premise of this test

    def g():
        numpyro.sample("s", d)

    with recording() as rec:
        got = strategy_of(g)["s"]
    assert got == ("reparam" if d.has_rsample else "reinforce")
    assert [n.name for n in rec.records] == ([] if d.has_rsample else ["s"])


# --------------------------------------------------------------------------- effects of a claim


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_reinforce_detaches_value_and_registers_node_reparam_does_not(jit):
    def value_of(loc, strategy):
        g = reinforce(guide, sites=["z", "w"]) if strategy == "reinforce" else guide
        tr = simulate(seed(g, 1), loc)
        return tr["z"]["value"] + tr["w"]["value"].sum()

    for strategy, expected in (("reinforce", 0.0), ("reparam", 4.0)):
        grad = jax.grad(value_of)
        grad = jax.jit(grad, static_argnums=1) if jit else grad
        assert float(grad(0.5, strategy)) == expected

    with recording() as rec:
        tr = simulate(seed(reinforce(guide, sites=["z", "w"]), 1), 0.5)
    labels = {n.name: n for n in rec.records}
    assert sorted(labels) == ["b", "w", "z"]
    assert labels["w"].log_prob.names == ("data",)
    np.testing.assert_allclose(labels["w"].log_prob.array,
                               dist.Normal(0.5, 1.0).log_prob(tr["w"]["value"]), rtol=1e-6)


def test_reparam_refuses_a_discrete_site_naming_site_and_distribution():
    with pytest.raises(ValueError, match=r"reparam: site 'b' \(Bernoulli\w*\).*reinforce"):
        strategy_of(reparam(guide, sites=["b"]))

    def plated():
        with numpyro.plate("data", 3):
            numpyro.sample("k", dist.Categorical(jnp.ones(4) / 4))

    # the name is the base distribution's, not NumPyro's ExpandedDistribution wrapper
    with pytest.raises(ValueError, match=r"site 'k' \(Categorical\w*\)"):
        strategy_of(reparam(plated))
    with pytest.raises(ValueError, match=r"site 'b' \(Bernoulli\w*\)"):
        strategy_of(lambda: numpyro.sample("b", dist.Bernoulli(0.5),
                                           infer={"strategy": "reparam"}))


def test_collectors_do_not_outlive_a_trace():
    with pytest.raises(ZeroDivisionError):
        with recording():
            raise ZeroDivisionError
    assert _RECORDERS == []
    with jax.checking_leaks():
        f = jax.jit(lambda loc: simulate(seed(reinforce(guide), 0), loc)["z"]["value"])
        f(0.1)
        f(0.2)
    assert _RECORDERS == []
