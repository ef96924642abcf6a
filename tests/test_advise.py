"""The strategy advisor: rows per applicable strategy, a recommendation that applies in one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from stackvi.advise import advise


def model():
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(2.0 * b + z, 1.0), obs=1.5)


def guide():
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", 0.3)))
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 0.7))


@pytest.mark.slow  # about ten compilations
def test_advise_measures_applicable_strategies_and_recommends_the_best():
    obj = estimators.elbo(model, guide, num_particles=2)
    params = obj.init(jax.random.PRNGKey(0))
    advice = advise(obj, params, jax.random.PRNGKey(1), num_keys=32, repeats=2)
    rows = {(r.site, r.label): r for r in advice.rows}
    # b: score function (with and without LOO), enumeration, MVD, DisARM all apply ...
    for label in ("reinforce", "reinforce + loo", "enumerate", "mvd", "disarm"):
        assert rows[("b", label)].error is None, rows[("b", label)]
    # ... enumeration of a binary site adds no variance from b; the recommendation for b
    # is one of the lowest-variance rows (ties with another exact rule go by step time)
    ok_b = [r for r in advice.rows if r.site == "b" and r.error is None]
    lowest = min(r.variance for r in ok_b)
    assert rows[("b", "enumerate")].variance <= lowest + 1e-6 * rows[("b", "reinforce")].variance
    chosen = next(r for r in ok_b if (r.strategy, r.options) == advice.recommended["b"])
    assert chosen.variance <= lowest + 1e-6 * rows[("b", "reinforce")].variance
    assert rows[("z", "enumerate")].error is not None  # continuous: refused, with the reason
    assert "no finite support" in rows[("z", "enumerate")].error
    # z: pathwise and MVD both beat the score function; which of the two wins variance x
    # time depends on the machine's timing (flipped under load), so the rule is checked
    ok_z = [r for r in advice.rows if r.site == "z" and r.error is None]
    assert rows[("z", "reparam")].variance < rows[("z", "reinforce")].variance
    assert advice.recommended["z"][0] in ("reparam", "mvd")
    chosen_z = next(r for r in ok_z if (r.strategy, r.options) == advice.recommended["z"])
    assert chosen_z.score == min(r.score for r in ok_z)
    assert advice.combined.score <= advice.default.score
    assert "**(best)**" in advice.table()

    # applied in one line, it is the estimator that was measured: every recommended strategy
    # is installed (pathwise sites leave no record; z's pick depends on timing, see above)
    tuned = estimators.elbo(model, advice.configure(guide), num_particles=2)
    _, records = tuned.run(params, jax.random.PRNGKey(2))
    expected = {s: kind for s, (kind, _) in advice.recommended.items() if kind != "reparam"}
    assert {r.name: r.kind for r in records} == expected
    value, grads = tuned.value_and_grad(params, jax.random.PRNGKey(3))
    assert np.isfinite(value) and all(np.isfinite(g) for g in grads.values())


@pytest.mark.slow
def test_sites_claimed_by_the_guide_are_reported_fixed():
    obj = estimators.elbo(model, handlers.reinforce(guide, sites=["b"]))
    params = {"l": jnp.array(0.3), "m": jnp.array(0.0)}
    advice = advise(obj, params, jax.random.PRNGKey(1), num_keys=16, repeats=1)
    assert advice.fixed == ("b",)
    assert {r.site for r in advice.rows} == {"z"}


PROGRAM = '''
import numpyro, numpyro.distributions as dist

def model():
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=1.5)

def guide():
    numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", 0.3)))
'''


@pytest.mark.slow
def test_cli_advise_prints_the_table_and_the_fit_options(tmp_path, capsys):
    from stackvi.cli import main

    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    status = main(["advise", "--model", f"{path}:model", "--guide", f"{path}:guide",
                   "--particles", "2", "--keys", "8", "--repeats", "1"])
    out = capsys.readouterr().out
    assert status == 0
    assert "| b | enumerate |" in out or "| b | enumerate **(best)** |" in out
    assert "**(best)**" in out and "recommended: stackvi fit --strategy b=" in out


@pytest.mark.slow
def test_advise_on_selected_sites_only():
    """``sites=`` restricts the measurements; the other sites keep their defaults (listed as
    kept); a name that is no latent site of the guide is an error naming the real ones."""
    obj = estimators.elbo(model, guide)
    params = {"l": jnp.array(0.3), "m": jnp.array(0.0)}
    advice = advise(obj, params, jax.random.PRNGKey(1), num_keys=16, repeats=1, sites=["z"])
    assert {r.site for r in advice.rows} == {"z"} and advice.fixed == ("b",)
    assert set(advice.recommended) == {"z"}
    assert "not among the sites advised on" in advice.table()
    by_selector = advise(obj, params, jax.random.PRNGKey(1), num_keys=16, repeats=1,
                         sites=lambda msg: msg["name"] == "b")
    assert {r.site for r in by_selector.rows} == {"b"}
    with pytest.raises(ValueError, match=r"sites \['w'\] are not latent sites .*'b', 'z'"):
        advise(obj, params, jax.random.PRNGKey(1), sites=["w"])
