"""MVD for Binomial and Geometric sites, unbiased against the exact ELBO gradient.

The ELBO of a one-site model sums over the site's support: exactly for the
Binomial (0..n), and for the Geometric up to 400 failures (the tail past it
is below 1e-60 at the success probabilities used here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

from stackvi import estimators, handlers
from tests.conftest import assert_unbiased, per_key

Y = jnp.array([1.1, 0.2])


def _elbo_by_support(guide_dist, prior, support, g):
    """Σ_x q(x)[log p(x) + Σ_i log N(Y_i; g(x_i), 0.5) − log q(x)] per plate element."""
    def per_element(q, p):
        x = support[:, None]  # (S, 1) against the plate's elements (2,)
        lq, lp = q.log_prob(x), p.log_prob(x)
        lik = dist.Normal(g(x), 0.5).log_prob(Y)
        return jnp.sum(jnp.exp(lq) * (lp + lik - lq))
    return per_element(guide_dist, prior)


CASES = {
    # name: (guide dist from the param, prior, support, cost of x)
    "binomial": (lambda a: dist.Binomial(4, logits=a), dist.Binomial(4, 0.3),
                 jnp.arange(5.0), lambda x: jnp.sqrt(x) - 0.5),
    "binomial_probs": (lambda a: dist.Binomial(3, probs=jax.nn.sigmoid(a)), dist.Binomial(3, 0.6),
                       jnp.arange(4.0), lambda x: jnp.sin(x)),
    "geometric": (lambda a: dist.Geometric(logits=a), dist.Geometric(0.4),
                  jnp.arange(400.0), lambda x: jnp.log1p(x)),
    "geometric_probs": (lambda a: dist.Geometric(probs=jax.nn.sigmoid(a)), dist.Geometric(0.5),
                        jnp.arange(400.0), lambda x: 0.3 * x),
}
A0 = jnp.array([0.6, -0.4])  # success probabilities 0.65 and 0.40 (logits)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.endswith("_probs")
                                  else c for c in CASES])
@pytest.mark.slow
def test_mvd_unbiased(case):
    make, prior, support, g = CASES[case]

    def model():
        with numpyro.plate("i", 2):
            x = numpyro.sample("x", prior)
            numpyro.sample("y", dist.Normal(g(x), 0.5), obs=Y)

    def guide():
        with numpyro.plate("i", 2):
            numpyro.sample("x", make(numpyro.param("a", A0)))

    obj = estimators.elbo(model, handlers.mvd(guide))
    values, grads = per_key(obj, {"a": A0}, 4000)

    def exact(a):
        return _elbo_by_support(make(a), prior, support, g)

    assert_unbiased(values, exact(A0), f"{case} ELBO")
    assert_unbiased(grads["a"], jax.grad(exact)(A0), f"{case} d/da")
