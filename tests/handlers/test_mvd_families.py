"""MVD for Binomial and Geometric sites, unbiased against the exact ELBO gradient.

The ELBO of a one-site model sums over the site's support: exactly for the
Binomial (0..n), and for the Geometric up to 400 failures (the tail past it
is below 1e-60 at the success probabilities used here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import betaln, gammaln
from numpyro.handlers import seed
from scipy import integrate, special

from stackvi import estimators, handlers
from stackvi.gradients.branches import branched_value
from stackvi.handlers.mvd import size_bias
from tests.conftest import Z_SIGMAS, assert_unbiased, per_key

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


# --------------------------------------------------------------------------- Beta and Dirichlet
#
# Exact ELBOs by quadrature in float64, in logit coordinates (x = σ(u)), where the
# integrands are analytic and decay exponentially at both ends, so the trapezoid rule
# on a wide uniform grid converges geometrically and the endpoint singularities of
# the densities in x never appear. A Beta(α, β) density in u is exp(α log x + β log(1 − x)
# − log B(α, β)), with log x = −softplus(−u) and log(1 − x) = −softplus(u).

GRID = (-60.0, 60.0, 1201)  # step 0.1: a tail e^{−0.5·60} and a step error far below 1e-12


def _grid():
    lo, hi, n = GRID
    return jnp.linspace(lo, hi, n), (hi - lo) / (n - 1)


def _log_x(u):
    """(log σ(u), log(1 − σ(u)))."""
    return -jnp.logaddexp(0.0, -u), -jnp.logaddexp(0.0, u)


def _beta_log_density(lx, l1x, a, b):
    """log Beta(x; a, b) from log x and log(1 − x)."""
    return (a - 1) * lx + (b - 1) * l1x - betaln(a, b)


def _dirichlet_log_density(lxs, alpha):
    return (sum((a - 1) * lx for a, lx in zip(alpha, lxs, strict=True)) + gammaln(sum(alpha))
            - sum(gammaln(a) for a in alpha))


BETA_PRIOR = (2.0, 1.5)
BETA_Y = jnp.array([1.1, 0.2])
BETA_P0 = {"a": jnp.log(jnp.array([1.5, 0.8])), "b": jnp.log(jnp.array([2.5, 1.2]))}


def _beta_g(x):
    return jnp.sin(4.0 * x) + x


def _beta_exact(p):
    """Σ_i E_q[log p(x_i) + log N(Y_i; g(x_i), 0.5) − log q(x_i)], q = Beta(e^{a_i}, e^{b_i})."""
    u, h = _grid()
    lx, l1x = _log_x(u)
    total = 0.0
    for i in range(2):
        a, b = jnp.exp(p["a"][i]), jnp.exp(p["b"][i])
        lq = _beta_log_density(lx, l1x, a, b)
        f = (_beta_log_density(lx, l1x, *BETA_PRIOR) - lq
             + jax.scipy.stats.norm.logpdf(BETA_Y[i], _beta_g(jnp.exp(lx)), 0.5))
        total = total + h * jnp.sum(jnp.exp(lq + lx + l1x) * f)  # dx = x(1 − x) du
    return total


def _beta_model():
    with numpyro.plate("i", 2):
        x = numpyro.sample("x", dist.Beta(*BETA_PRIOR))
        numpyro.sample("y", dist.Normal(_beta_g(x), 0.5), obs=BETA_Y)


def _beta_guide():
    with numpyro.plate("i", 2):
        a, b = numpyro.param("a", BETA_P0["a"]), numpyro.param("b", BETA_P0["b"])
        numpyro.sample("x", dist.Beta(jnp.exp(a), jnp.exp(b)))


DIR_PRIOR = (1.5, 2.0, 1.0)
DIR_Y = jnp.array([0.7, -0.3])
DIR_P0 = {"w": jnp.log(jnp.array([[0.9, 1.3, 0.7], [2.0, 0.6, 1.1]]))}


def _dir_g(x):
    return jnp.sin(3.0 * x[..., 0]) + x[..., 1] ** 2 - 2.0 * x[..., 2]


def _dirichlet_exact(p):
    """The ELBO over the simplex by stick-breaking: x₀ ~ Beta(α₀, α₁ + α₂) and, independently,
    x₁/(1 − x₀) ~ Beta(α₁, α₂); a 2-D trapezoid rule in the two logits."""
    u, h = _grid()
    lx0, l1x0 = _log_x(u[:, None])
    lr, l1r = _log_x(u[None, :])
    lxs = (lx0, l1x0 + lr, l1x0 + l1r)
    x = jnp.stack([jnp.broadcast_to(jnp.exp(lx), (u.size, u.size)) for lx in lxs], -1)
    total = 0.0
    for i in range(2):
        al = jnp.exp(p["w"][i])
        log_w = (al[0] * lx0 + (al[1] + al[2]) * l1x0 - betaln(al[0], al[1] + al[2])
                 + al[1] * lr + al[2] * l1r - betaln(al[1], al[2]))  # the density in (u, v)
        lq = _dirichlet_log_density(lxs, al)
        f = (_dirichlet_log_density(lxs, DIR_PRIOR) - lq
             + jax.scipy.stats.norm.logpdf(DIR_Y[i], _dir_g(x), 0.5))
        total = total + h * h * jnp.sum(jnp.exp(log_w) * f)
    return total


def _dir_model():
    with numpyro.plate("i", 2):
        x = numpyro.sample("x", dist.Dirichlet(jnp.array(DIR_PRIOR)))
        numpyro.sample("y", dist.Normal(_dir_g(x), 0.5), obs=DIR_Y)


def _dir_guide():
    with numpyro.plate("i", 2):
        numpyro.sample("x", dist.Dirichlet(jnp.exp(numpyro.param("w", DIR_P0["w"]))))


def _exact(fn, p0):
    with jax.enable_x64(True):
        p = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), p0)
        value, grads = jax.value_and_grad(fn)(p)
        return np.asarray(value), jax.tree.map(np.asarray, grads)


@pytest.mark.slow
def test_beta_quadrature_is_converged():
    """The grid's answers move by < 1e-9 on a grid twice as fine and 4/3 as wide."""
    global GRID
    coarse = _exact(_beta_exact, BETA_P0)
    GRID, old = (-80.0, 80.0, 3201), GRID
    try:
        fine = _exact(_beta_exact, BETA_P0)
    finally:
        GRID = old
    for c, f in zip(jax.tree.leaves(coarse), jax.tree.leaves(fine), strict=True):
        np.testing.assert_allclose(c, f, atol=1e-9)


@pytest.mark.slow  # ~20-30 s each on two cores, mostly compiling the vmapped estimator
@pytest.mark.parametrize("layout", [False, True], ids=["continuation", "layout"])
@pytest.mark.parametrize("family", ["beta", "dirichlet"])
def test_mvd_beta_dirichlet_unbiased(family, layout):
    """By continuation (the default) and laid out along a branch axis (Dirichlet: blocks)."""
    model, guide, exact, p0 = {
        "beta": (_beta_model, _beta_guide, _beta_exact, BETA_P0),
        "dirichlet": (_dir_model, _dir_guide, _dirichlet_exact, DIR_P0),
    }[family]
    obj = estimators.elbo(model, handlers.mvd(guide, layout=True if layout else None))
    values, grads = per_key(obj, p0, 40000)
    value, grad = _exact(exact, p0)
    assert_unbiased(values, value, f"{family} ELBO")
    for name in p0:
        assert_unbiased(grads[name], grad[name], f"{family} d/d{name}")


# --------------------------------------------------------------------------- the m_α sampler

SIZE_BIASED = [(0.05, 0.05), (0.3, 2.0), (1.0, 1.0), (2.5, 0.5), (5.0, 30.0), (0.7, 500.0),
               (50.0, 0.2)]


def _size_biased_moments(a, b):
    """E[y], E[log y], E[log(1 − y)] under m(y) ∝ Beta(y; a, b)(−log y), by adaptive
    quadrature in the logit u (float64)."""
    c = special.digamma(a + b) - special.digamma(a)

    def density(u):  # m in u: Beta(σ(u); a, b) σ(u)(1 − σ(u)) (−log σ(u)) / c
        lx, l1x = -np.logaddexp(0.0, -u), -np.logaddexp(0.0, u)
        return np.exp(a * lx + b * l1x - special.betaln(a, b)) * (-lx) / c, lx, l1x

    out = []
    for k in range(4):
        def f(u, k=k):
            m, lx, l1x = density(u)
            return m * (1.0, np.exp(lx), lx, l1x)[k]
        out.append(integrate.quad(f, -np.inf, np.inf, limit=1000, epsabs=0, epsrel=1e-11)[0])
    np.testing.assert_allclose(out[0], 1.0, rtol=1e-8)  # m integrates to one: E_p[−log x] = c
    return out[1:]


def _acceptance(a, b):
    """The sampler's exact acceptance rate c / (f(0) + Z) (stackvi.handlers.mvd.size_bias)."""
    c = special.digamma(a + b) - special.digamma(a)
    return c / (b / (a * (a + b)) + np.log1p(b / (a + 0.5)))


def test_size_bias_against_quadrature():
    """x·V, x ~ Beta(a, b) (float64 gammas here), V from size_bias (10,000 per (a, b)), has
    the moments of m ∝ Beta(a, b)·(−log y) found by quadrature; the mean number of
    proposals is 1/(exact acceptance rate)."""
    n = 10000
    a, b = (np.broadcast_to(np.array(v)[:, None], (len(SIZE_BIASED), n))
            for v in zip(*SIZE_BIASED, strict=True))
    t, tries = jax.jit(size_bias)(jax.random.PRNGKey(3), a, b)
    rng = np.random.default_rng(3)
    log_ga, log_gb = np.log(rng.gamma(a)), np.log(rng.gamma(b))
    log_x = log_ga - np.logaddexp(log_ga, log_gb)
    log_y = (log_x - np.asarray(t, np.float64)).T  # (n, cases)
    exact = np.array([_size_biased_moments(*ab) for ab in SIZE_BIASED])
    stats = (np.exp(log_y), log_y, np.log1p(-np.exp(log_y)))
    for k, what in enumerate(["E[y]", "E[log y]", "E[log(1 - y)]"]):
        assert_unbiased(stats[k], exact[:, k], f"{what} at (a, b) = {SIZE_BIASED}")
    acc = np.array([_acceptance(*ab) for ab in SIZE_BIASED])
    assert np.all(acc > 0.98)
    # proposals per draw ~ Geometric(acc): mean 1/acc, variance (1 − acc)/acc² (exact: σ̂
    # is 0 where every draw of a case accepts at once)
    mean = np.asarray(tries, np.float64).mean(1)
    bound = Z_SIGMAS * np.sqrt((1 - acc) / acc**2 / n)
    assert np.all(np.abs(mean - 1 / acc) <= bound), (mean, 1 / acc, bound)


def test_block_layout():
    """A Dirichlet-like block: each branch replaces one whole event row (batch 2, rows 2, K 3)."""
    x = jnp.zeros((2, 2, 3))
    ys = jnp.arange(1.0, 1 + 3 * 2 * 2 * 3).reshape(1, 3, 2, 2, 3)  # (J, K, batch, rows, K)
    v = branched_value(x, ys, batch=(2,), event=(2, 3), block=3)
    assert v.shape == (1 + 6, 2, 2, 3)
    for m in range(2):
        for i in range(3):
            expect = x.at[:, m].set(ys[0, i, :, m])
            np.testing.assert_array_equal(v[1 + 3 * m + i], expect)


def test_unsupported_family_error_is_unchanged():
    def guide():
        numpyro.sample("t", dist.StudentT(3.0, 0.0, 1.0))

    message = (r"mvd: site 't' \(StudentT\) has no weak-derivative decomposition here "
               r"\(known: \[.*'Beta'.*'Dirichlet'.*\]\)\. Use reinforce, reparam or "
               r"\(finite support\) enumerate for it\.")
    with pytest.raises(ValueError, match=message):
        seed(handlers.mvd(guide), 0)()
