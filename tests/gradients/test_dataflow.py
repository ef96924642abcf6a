"""The data-flow check that refuses a term which reads a laid-out site but lost its axis.

Before it, ``jnp.sum(a)`` over a plated enumerated/branched site in the model was
silently wrong (NumPyro's ``guide_plate_contraction`` under mvd: −84.82 against
the exact −13.84); the exact answers of the valid forms are checked in
``tests/peers`` and ``tests/handlers``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from stackvi.gradients.dataflow import reads, tag, tagging
from tests.conftest import assert_unbiased, per_key


def _sets(found):
    return [sorted(s) for s in found]


def test_reads_follows_data_through_control_flow_and_calls():
    def program(a, b):
        a, b = tag(a, "enum:a"), tag(b, "mvd:b")

        def step(carry, x):  # a enters the carry at the first step, b only through xs
            return carry + a[0], carry * x

        carry, ys = jax.lax.scan(step, 0.0, b)
        branch = jax.lax.cond(b[0] > 0, lambda: a[1], lambda: 2.0)
        loop = jax.lax.while_loop(lambda c: c[0] < b[1], lambda c: (c[0] + 1.0, c[1] + a[2]),
                                  (0.0, 0.0))
        return [carry, ys, jax.jit(lambda x: x * 2)(b), jax.nn.relu(a), branch, loop[1],
                jnp.ones(2) * 3, jax.lax.stop_gradient(a)]

    with tagging():
        found = reads(program, jnp.ones(3), jnp.ones(4))
    assert _sets(found) == [["enum:a"], ["enum:a", "mvd:b"], ["mvd:b"], ["enum:a"],
                            ["enum:a", "mvd:b"], ["enum:a", "mvd:b"], [], ["enum:a"]]


def _plated(total):
    """Model: a Poisson/Bernoulli site in a plate, a cost outside it reading ``total(a)``."""
    def model(kind):
        with numpyro.plate("a_axis", 2):
            a = numpyro.sample("a", dist.Bernoulli(0.4) if kind == "b" else dist.Poisson(3.0))
        numpyro.sample("y", dist.Normal(total(a), 1.0), obs=1.0)

    def guide(kind):
        with numpyro.plate("a_axis", 2):
            p = numpyro.param("p", jnp.array([0.3, 0.6]))
            numpyro.sample("a", dist.Bernoulli(p) if kind == "b" else dist.Poisson(3 * p))

    return model, guide


# mvd branches by continuation (gradients/rerun.py): no axis of its own, the site's plate is
# what a cost that reads it must keep; mvd(layout=True) lays the branches out as before.
_LOST = "but has lost its axis '{}'"
_PLATE = r"but lacks its plate\(s\) \['a_axis'\]"


@pytest.mark.parametrize("wrap,options,kind,label,lost", [
    (handlers.enumerate, {}, "b", "BernoulliProbs", _LOST.format("enum:a")),
    (handlers.mvd, {}, "b", "BernoulliProbs", _PLATE),
    (handlers.mvd, {}, "p", "Poisson", _PLATE),
    (handlers.mvd, {"layout": True}, "b", "BernoulliProbs", _LOST.format("mvd:a")),
    (handlers.mvd, {"layout": True}, "p", "Poisson", _LOST.format("mvd:a")),
    (handlers.disarm, {}, "b", "BernoulliProbs", _LOST.format("disarm:a"))])
def test_cost_summing_a_laid_out_site_over_every_dim_is_refused(wrap, options, kind, label,
                                                                 lost):
    model, guide = _plated(jnp.sum)
    obj = estimators.elbo(model, wrap(guide, sites=["a"], **options))
    params = obj.init(jax.random.PRNGKey(0), kind)
    with pytest.raises(ValueError, match=rf"term 'p:y' reads site 'a' \({label}, claimed by "
                                         rf"{wrap.__name__}\) {lost}"):
        obj.value_and_grad(params, jax.random.PRNGKey(1), kind)
    # the same under the user's own jit, and for the plain estimate
    with pytest.raises(ValueError, match=lost):
        jax.jit(obj.estimate, static_argnums=2)(params, jax.random.PRNGKey(1), kind)


def test_cost_summing_the_plate_only_keeps_the_axis_and_is_exact():
    """Inside the plate the cost is exact (no false refusal from the data-flow check);
    ``a.sum(-1)`` outside it keeps the enumerated axis, and the plate check refuses it."""
    def model():
        with numpyro.plate("a_axis", 2):
            a = numpyro.sample("a", dist.Bernoulli(0.4))
            numpyro.sample("y", dist.Normal(a * 2.0, 1.0), obs=jnp.array([1.0, -0.5]))

    def guide():
        with numpyro.plate("a_axis", 2):
            numpyro.sample("a", dist.Bernoulli(numpyro.param("p", jnp.array([0.3, 0.6]))))

    def exact(p):
        out = 0.0
        for i, y in enumerate((1.0, -0.5)):
            for a in (0.0, 1.0):
                q = p[i] if a else 1 - p[i]
                lp = jnp.log(0.4 if a else 0.6) + dist.Normal(2 * a, 1.0).log_prob(y)
                out = out + q * (lp - jnp.log(q))
        return out

    obj = estimators.elbo(model, handlers.enumerate(guide))
    p = jnp.array([0.3, 0.6])
    value, grads = jax.jit(obj.value_and_grad)({"p": p}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(value, exact(p), rtol=1e-5)
    np.testing.assert_allclose(grads["p"], jax.grad(exact)(p), rtol=1e-5)

    model_plate_sum, guide2 = _plated(lambda a: a.sum(-1))
    obj = estimators.elbo(model_plate_sum, handlers.enumerate(guide2))
    with pytest.raises(ValueError, match="site 'y' .* no plate declares it"):
        obj.value_and_grad({"p": p}, jax.random.PRNGKey(0), "b")


def test_model_side_sum_over_every_dim_is_refused_and_the_plate_form_is_exact():
    """The model sums out ``a`` (funsor's enumeration): ``jnp.sum(a)`` outside the plate gave
    −2.364 against the exact log p(y) = −1.407, silently (NumPyro's TraceEnum_ELBO trusts
    the user here too). Refused; the same cost per element inside the plate is exact."""
    def model():
        with numpyro.plate("a_axis", 2):
            a = numpyro.sample("a", dist.Bernoulli(0.4), infer={"enumerate": "parallel"})
        numpyro.sample("y", dist.Normal(jnp.sum(a), 1.0), obs=1.7)

    obj = estimators.elbo(model, lambda: None)
    with pytest.raises(ValueError, match=r"term 'p:y' reads site 'a' \(BernoulliProbs, summed "
                                         r"out in the model\) but has lost its axis 'sum:a'"):
        obj.estimate({}, jax.random.PRNGKey(0))

    y = jnp.array([1.7, -0.3])

    def plated():
        with numpyro.plate("a_axis", 2):
            a = numpyro.sample("a", dist.Bernoulli(0.4), infer={"enumerate": "parallel"})
            numpyro.sample("y", dist.Normal(a * 1.5, 1.0), obs=y)

    exact = jnp.sum(jnp.logaddexp(jnp.log(0.4) + dist.Normal(1.5, 1.0).log_prob(y),
                                  jnp.log(0.6) + dist.Normal(0.0, 1.0).log_prob(y)))
    value = jax.jit(estimators.elbo(plated, lambda: None).estimate)({}, jax.random.PRNGKey(0))
    np.testing.assert_allclose(value, exact, rtol=1e-6)


def _independent_pair(x1):
    def model():
        b0 = numpyro.sample("b0", dist.Bernoulli(0.3))
        numpyro.sample("x0", dist.Normal(2.0 * b0, 1.0), obs=0.4)
        b1 = numpyro.sample("b1", dist.Bernoulli(0.6))
        numpyro.sample("x1", dist.Normal(5.0 * b1, 1.0), obs=x1)

    def guide():
        numpyro.sample("b0", dist.Bernoulli(logits=numpyro.param("l0", 0.2)))
        numpyro.sample("b1", dist.Bernoulli(logits=numpyro.param("l1", -0.1)))

    return model, guide


def test_signal_leaves_out_later_terms_the_sample_cannot_reach():
    """b0's learning signal has only b0's own terms: the later, independent b1 and x1 (far
    off, so they vary wildly) leave b0's gradient unchanged, draw by draw — program order
    alone would put them in. b1's gradient does change: x1 is in its signal."""
    params = {"l0": jnp.array(0.2), "l1": jnp.array(-0.1)}
    grads = {}
    for x1 in (0.5, 40.0):
        obj = estimators.elbo(*_independent_pair(x1))
        keys = jax.random.split(jax.random.PRNGKey(0), 64)
        grads[x1] = jax.jit(jax.vmap(lambda k, o=obj: o.value_and_grad(params, k)[1]))(keys)
    np.testing.assert_array_equal(grads[0.5]["l0"], grads[40.0]["l0"])
    assert not np.allclose(grads[0.5]["l1"], grads[40.0]["l1"])


def test_signal_keeps_terms_reached_through_an_enumerated_site():
    """b1 enumerated with q(b1 | b0): x1 does not read b0's value, but its weight q(b1 | b0)
    does, so x1 stays in b0's signal (leaving it out would bias the gradient)."""
    def model():
        numpyro.sample("b0", dist.Bernoulli(0.3))
        b1 = numpyro.sample("b1", dist.Bernoulli(0.6))
        numpyro.sample("x1", dist.Normal(3.0 * b1, 1.0), obs=2.5)

    def guide():
        b0 = numpyro.sample("b0", dist.Bernoulli(logits=numpyro.param("l0", 0.2)))
        numpyro.sample("b1", dist.Bernoulli(jnp.where(b0 == 1, 0.9, 0.2)))

    def exact(l0):
        out = 0.0
        q0 = jax.nn.sigmoid(l0)
        for b0 in (0, 1):
            p1 = 0.9 if b0 else 0.2
            for b1 in (0, 1):
                q = (q0 if b0 else 1 - q0) * (p1 if b1 else 1 - p1)
                lp = (jnp.log(0.3 if b0 else 0.7) + jnp.log(0.6 if b1 else 0.4)
                      + dist.Normal(3.0 * b1, 1.0).log_prob(2.5))
                out = out + q * (lp - jnp.log(q))
        return out

    obj = estimators.elbo(model, handlers.enumerate(guide, sites=["b1"]))
    params = {"l0": jnp.array(0.2)}
    values, grads = per_key(obj, params, 4000)
    assert_unbiased(grads["l0"], jax.grad(exact)(0.2), "gradient through q(b1 | b0)")


def _plate_then_global(x_w):
    def model():
        with numpyro.plate("i", 3):
            b = numpyro.sample("b", dist.Bernoulli(0.4))
            numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=jnp.array([0.3, 1.8, -0.4]))
        w = numpyro.sample("w", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(6.0 * w, 1.0), obs=x_w)

    def guide():
        with numpyro.plate("i", 3):
            numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("lb", jnp.zeros(3) + 0.1)))
        numpyro.sample("w", dist.Bernoulli(logits=numpyro.param("lw", 0.2)))  # reads no b

    return model, guide


def test_plate_not_pooled_when_no_later_site_reads_it():
    """A later guide site outside the plate that does not read b (w) does not mix b's
    elements: b keeps per-element signals (program order alone pools it over the plate).
    Element i's gradient then depends only on x_i's term: changing x_1 leaves elements 0
    and 2 unchanged, draw by draw; and w's far-off observation never enters."""
    params = {"lb": jnp.zeros(3) + 0.1, "lw": jnp.array(0.2)}
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    got = []
    for x_w in (0.5, 40.0):
        obj = estimators.elbo(*_plate_then_global(x_w))
        got.append(jax.jit(jax.vmap(lambda k, o=obj: o.value_and_grad(params, k)[1]))(keys))
    np.testing.assert_array_equal(got[0]["lb"], got[1]["lb"])
    assert not np.allclose(got[0]["lw"], got[1]["lw"])
    # the plated gradient is per element: its variance is that of one element's signal
    assert np.var(got[0]["lb"], axis=0).max() < 5.0


def test_plate_pooled_when_a_later_site_reads_it():
    """The mixing guide (z ~ q(z | mean(b)), tests/estimators/test_elbo.py) still pools: its
    records carry the plate in ``pooled``, and the analysis keeps it."""
    from tests.estimators.test_elbo import XD, mix_guide, mix_model

    obj = estimators.elbo(mix_model, mix_guide)
    eta = {"eta": jnp.array([-0.5, 0.3, 0.8])}
    _, records = obj.run(eta, jax.random.PRNGKey(0), XD)
    (b,) = [r for r in records if r.name == "b"]
    assert "d" not in b.log_prob.names  # summed over the plate
