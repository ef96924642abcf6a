"""Port of Pyro's ``tests/infer/test_inference.py``: the conjugate models.

Peer file: pyro-ppl/pyro ``tests/infer/test_inference.py`` at commit
ff6ae1c9572591791aae8842bcd702fcf0b46fd6 (2024-10-24).

Pyro trains each conjugate model for thousands of steps and compares the
learned guide with the analytic posterior. Here the same models and guides (and
Pyro's initial params: the posterior shifted by Pyro's offsets) are checked by
the *gradient* at those fixed params: the ELBO gradient is written in closed
form (Normal–Normal, Poisson–Gamma, Exponential–Gamma, Bernoulli–Beta) and
stackvi's estimate must be unbiased for it (``assert_unbiased``, 4σ̂/√N), both
pathwise (Pyro's ``reparameterized=True``, stackvi's default) and by REINFORCE
(Pyro's ``fakes.Nonreparameterized*``, stackvi's ``reinforce`` strategy).
For the multi-sample objectives Pyro runs (RenyiELBO, ReweightedWakeSleep) the
exact answer is taken at the analytic posterior, where every importance weight
equals p(x): the bound is log p(x) with zero variance and the guide gradient
has mean 0. One short fit per model family (slow) reaches the analytic posterior.

Also ported: SafetyTests (duplicate names → error; an extra guide site → Pyro
warns, stackvi raises naming the site), test_sequential_plating_sum (RenyiELBO
α = 0 with 30 particles and a Bernoulli guide: exact by summing over the number
of particles with x = 1, a Binomial), test_non_nested_plating_sum (finite value
and gradients).

Left out: TraceMeanField/TailAdaptive/MMD/EnergyDistance ELBOs and
ShapeAugmentedGamma (no stackvi counterpart; NumPyro's Gamma is reparameterized
already), TestFixedModelGuide (``poutine.block`` of param sites: a handler
test, not a gradient one), do_fit_prior_test (fits the prior by a
guide-only model, the same gradients), test_reparam_stable.

Status: written against stackvi at commit 12aa282 (the gradient layer before its
redesign). Known failures are strict xfails whose reasons name the bug. Not every
slow-marked case could be run in the porting session (a loaded 2-core machine);
cases never run are unmarked, so a first ``-m slow`` run may still turn some red.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from jax.scipy.special import betaln, digamma, gammaln
from numpyro.distributions import constraints

import stackvi as sv
from stackvi import estimators, handlers
from tests.conftest import assert_unbiased, per_key
from tests.peers._pyro_helpers import check_unbiased

SLOW = pytest.mark.slow
N_KEYS = 2000


def log_normal(x, loc, scale):
    return -0.5 * jnp.log(2 * jnp.pi * scale**2) - (x - loc) ** 2 / (2 * scale**2)


def guide_with(guide, strategy, site):
    return handlers.reinforce(guide, sites=[site]) if strategy == "reinforce" else guide


STRATEGIES = ["default", "reinforce"]


# --------------------------------------------------------------------------- Normal–Normal


class NormalNormal:
    lam0 = np.array([0.1, 0.1])  # precision of prior
    loc0 = np.array([0.0, 0.5])  # prior mean
    lam = np.array([6.0, 4.0])  # known precision of observation noise
    data = np.array([[-0.1, 0.3], [0.00, 0.4], [0.20, 0.5], [0.10, 0.7]])
    batch_size = 4
    lam_n = lam0 + len(data) * lam
    log_sig_n = -0.5 * np.log(lam_n)
    loc_n = data.sum(0) * (lam / lam_n) + loc0 * (lam0 / lam_n)

    def model(self):
        loc_latent = numpyro.sample(
            "loc_latent", dist.Normal(self.loc0, self.lam0**-0.5).to_event(1))
        with numpyro.plate("data", self.batch_size):
            numpyro.sample("obs", dist.Normal(loc_latent, self.lam**-0.5).to_event(1),
                           obs=self.data)
        return loc_latent

    def guide(self):
        loc_q = numpyro.param("loc_q", jnp.asarray(self.loc_n + 0.134, jnp.float32))
        log_sig_q = numpyro.param("log_sig_q", jnp.asarray(self.log_sig_n - 0.14, jnp.float32))
        sig_q = jnp.exp(log_sig_q)
        numpyro.sample("loc_latent", dist.Normal(loc_q, sig_q).to_event(1))

    def elbo(self, p):
        m, v = p["loc_q"], jnp.exp(p["log_sig_q"])
        s0, s = self.lam0**-0.5, self.lam**-0.5
        n = len(self.data)
        per_dim = (log_normal(m, self.loc0, s0) - v**2 / (2 * s0**2)
                   + log_normal(self.data, m, s).sum(0) - n * v**2 / (2 * s**2)
                   + 0.5 * jnp.log(2 * jnp.pi * jnp.e * v**2))
        return per_dim.sum()

    def log_evidence(self):
        return float(self.elbo({"loc_q": jnp.asarray(self.loc_n),
                                "log_sig_q": jnp.asarray(self.log_sig_n)}))

    def init(self):
        return {"loc_q": jnp.asarray(self.loc_n + 0.134, jnp.float32),
                "log_sig_q": jnp.asarray(self.log_sig_n - 0.14, jnp.float32)}

    def posterior(self):
        return {"loc_q": jnp.asarray(self.loc_n, jnp.float32),
                "log_sig_q": jnp.asarray(self.log_sig_n, jnp.float32)}


# --------------------------------------------------------------------------- Poisson–Gamma


def gamma_entropy(a, b):
    return a - jnp.log(b) + gammaln(a) + (1 - a) * digamma(a)


def gamma_log_prior(a, b, a0, b0):
    """E_{Gamma(a, b)}[log Gamma(λ; a0, b0)]."""
    e_log = digamma(a) - jnp.log(b)
    return a0 * jnp.log(b0) - gammaln(a0) + (a0 - 1) * e_log - b0 * a / b


class PoissonGamma:
    alpha0, beta0 = 1.0, 1.0
    data = np.array([1.0, 2.0, 3.0])
    alpha_n = alpha0 + data.sum()
    beta_n = beta0 + len(data)

    def model(self):
        lambda_latent = numpyro.sample("lambda_latent", dist.Gamma(self.alpha0, self.beta0))
        with numpyro.plate("data", len(self.data)):
            numpyro.sample("obs", dist.Poisson(lambda_latent), obs=self.data)
        return lambda_latent

    def guide(self):
        alpha_q = numpyro.param("alpha_q", self.alpha_n + math.exp(0.17),
                                constraint=constraints.positive)
        beta_q = numpyro.param("beta_q", self.beta_n / math.exp(0.143),
                               constraint=constraints.positive)
        numpyro.sample("lambda_latent", dist.Gamma(alpha_q, beta_q))

    def elbo(self, p):
        a, b = jnp.exp(p["alpha_q"]), jnp.exp(p["beta_q"])  # unconstrained: log
        e_log, e_lam = digamma(a) - jnp.log(b), a / b
        lik = jnp.sum(self.data * e_log - e_lam - gammaln(self.data + 1))
        return gamma_log_prior(a, b, self.alpha0, self.beta0) + lik + gamma_entropy(a, b)

    def init(self):
        return {"alpha_q": jnp.log(jnp.float32(self.alpha_n + math.exp(0.17))),
                "beta_q": jnp.log(jnp.float32(self.beta_n / math.exp(0.143)))}

    def posterior(self):
        return {"alpha_q": jnp.log(jnp.float32(self.alpha_n)),
                "beta_q": jnp.log(jnp.float32(self.beta_n))}


class ExponentialGamma(PoissonGamma):
    data = np.array([3.0, 2.0])
    alpha_n = 1.0 + len(data)
    beta_n = 1.0 + data.sum()

    def model(self):
        lambda_latent = numpyro.sample("lambda_latent", dist.Gamma(self.alpha0, self.beta0))
        with numpyro.plate("data", len(self.data)):
            numpyro.sample("obs", dist.Exponential(lambda_latent), obs=self.data)
        return lambda_latent

    def guide(self):
        alpha_q = numpyro.param("alpha_q", self.alpha_n * math.exp(0.17),
                                constraint=constraints.positive)
        beta_q = numpyro.param("beta_q", self.beta_n / math.exp(0.143),
                               constraint=constraints.positive)
        numpyro.sample("lambda_latent", dist.Gamma(alpha_q, beta_q))

    def elbo(self, p):
        a, b = jnp.exp(p["alpha_q"]), jnp.exp(p["beta_q"])
        e_log, e_lam = digamma(a) - jnp.log(b), a / b
        lik = jnp.sum(e_log - e_lam * self.data)
        return gamma_log_prior(a, b, self.alpha0, self.beta0) + lik + gamma_entropy(a, b)

    def init(self):
        return {"alpha_q": jnp.log(jnp.float32(self.alpha_n * math.exp(0.17))),
                "beta_q": jnp.log(jnp.float32(self.beta_n / math.exp(0.143)))}


# --------------------------------------------------------------------------- Bernoulli–Beta


class BernoulliBeta:
    alpha0, beta0 = 1.0, 1.0
    data = np.array([0.0, 1.0, 1.0, 1.0])
    batch_size = 4
    alpha_n = alpha0 + data.sum()
    beta_n = beta0 - data.sum() + len(data)
    log_alpha_n, log_beta_n = math.log(alpha_n), math.log(beta_n)

    def model(self):
        p_latent = numpyro.sample("p_latent", dist.Beta(self.alpha0, self.beta0))
        with numpyro.plate("data", self.batch_size):
            numpyro.sample("obs", dist.Bernoulli(p_latent), obs=self.data)
        return p_latent

    def guide(self):
        alpha_q_log = numpyro.param("alpha_q_log", self.log_alpha_n + 0.17)
        beta_q_log = numpyro.param("beta_q_log", self.log_beta_n - 0.143)
        alpha_q, beta_q = jnp.exp(alpha_q_log), jnp.exp(beta_q_log)
        numpyro.sample("p_latent", dist.Beta(alpha_q, beta_q))

    def elbo(self, p):
        a, b = jnp.exp(p["alpha_q_log"]), jnp.exp(p["beta_q_log"])
        e_log_p, e_log_1mp = digamma(a) - digamma(a + b), digamma(b) - digamma(a + b)
        prior = ((self.alpha0 - 1) * e_log_p + (self.beta0 - 1) * e_log_1mp
                 - betaln(self.alpha0, self.beta0))
        lik = jnp.sum(self.data * e_log_p + (1 - self.data) * e_log_1mp)
        entropy = (betaln(a, b) - (a - 1) * digamma(a) - (b - 1) * digamma(b)
                   + (a + b - 2) * digamma(a + b))
        return prior + lik + entropy

    def init(self):
        return {"alpha_q_log": jnp.float32(self.log_alpha_n + 0.17),
                "beta_q_log": jnp.float32(self.log_beta_n - 0.143)}

    def posterior(self):
        return {"alpha_q_log": jnp.float32(self.log_alpha_n),
                "beta_q_log": jnp.float32(self.log_beta_n)}


MODELS = {"normal_normal": NormalNormal, "poisson_gamma": PoissonGamma,
          "exponential_gamma": ExponentialGamma, "bernoulli_beta": BernoulliBeta}
SITE = {"normal_normal": "loc_latent", "poisson_gamma": "lambda_latent",
        "exponential_gamma": "lambda_latent", "bernoulli_beta": "p_latent"}


def model_params(fast_reinforce=("normal_normal",)):
    return [pytest.param(name, strategy, id=f"{name}-{strategy}",
                         marks=[] if strategy == "default" or name in fast_reinforce else [SLOW])
            for name in MODELS for strategy in STRATEGIES]


@pytest.mark.parametrize("name,strategy", model_params())
@pytest.mark.slow
def test_elbo_gradient(name, strategy):
    """Trace_ELBO at Pyro's initial params: value and gradient vs the closed form."""
    case = MODELS[name]()
    obj = estimators.elbo(case.model, guide_with(case.guide, strategy, SITE[name]))
    params = case.init()
    assert set(obj.init(jax.random.PRNGKey(0))) == set(params)
    exact_value, exact_grads = jax.value_and_grad(case.elbo)(params)
    check_unbiased(obj, params, exact_value, exact_grads, n=N_KEYS)


def multi_sample_objective(kind, model, guide, k):
    if kind == "renyi":
        return estimators.renyi(model, guide, alpha=0.2, num_particles=k)
    if kind == "renyi0":
        return estimators.renyi(model, guide, alpha=0.0, num_particles=k)
    if kind == "iwae":
        return estimators.iwae(model, guide, num_particles=k)
    if kind == "rws":
        return estimators.rws(model, guide, num_particles=k)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["renyi", pytest.param("iwae", marks=SLOW),
                                  pytest.param("rws", marks=SLOW)])
@pytest.mark.parametrize("name,strategy", [
    pytest.param(n, s, id=f"{n}-{s}", marks=[] if (n, s) == ("normal_normal", "default")
                 else [SLOW])
    for n in ("normal_normal", "poisson_gamma", "bernoulli_beta") for s in STRATEGIES])
def test_multi_sample_at_posterior(name, strategy, kind):
    """RenyiELBO / ReweightedWakeSleep (Pyro: 2–3 particles) at the analytic posterior:
    every sample of the bound is log p(x); the guide gradient has mean 0."""
    case = MODELS[name]()
    obj = multi_sample_objective(kind, case.model, guide_with(case.guide, strategy, SITE[name]),
                                 3)
    params = case.posterior()
    log_px = float(case.elbo(params))  # the ELBO at the exact posterior is log p(x)
    values, grads = per_key(obj, params, N_KEYS)
    if kind != "rws":  # rws reports its own value (log-mean weight, also log p(x))
        np.testing.assert_allclose(np.asarray(values), log_px, rtol=1e-4, atol=1e-4)
    for k, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), k
        assert_unbiased(g, np.zeros(g.shape[1:]), f"grad {k}")


# --------------------------------------------------------------------------- short fits


@SLOW
@pytest.mark.parametrize("name", list(MODELS))
def test_fit_reaches_posterior(name):
    """One short fit (pathwise ELBO) from Pyro's initial params to the analytic posterior."""
    case = MODELS[name]()
    obj = estimators.elbo(case.model, case.guide, num_particles=8)
    result = sv.fit(obj, jax.random.PRNGKey(0), optimizer=optax.adam(0.01), num_steps=3000,
                    init_params=case.init(), progress=False)
    for k, v in case.posterior().items():
        # the ELBO's maximizer is the posterior (exact family); Pyro's prec (unconstrained)
        np.testing.assert_allclose(np.asarray(result.raw_params[k]), np.asarray(v), atol=0.08)


# --------------------------------------------------------------------------- SafetyTests


def _safety_guide():
    p = numpyro.param("p", jnp.ones(1), constraint=constraints.positive)
    numpyro.sample("loc_q", dist.Normal(jnp.zeros(1), p))
    numpyro.sample("loc_q_2", dist.Normal(jnp.zeros(1), p))


def _run(model, guide, *args):
    obj = estimators.elbo(model, guide)
    params = obj.init(jax.random.PRNGKey(0), *args)
    return obj.value_and_grad(params, jax.random.PRNGKey(1), *args)


def test_duplicate_names():
    def model_dup():
        numpyro.param("loc_q", jnp.ones(1))
        numpyro.sample("loc_q", dist.Normal(jnp.zeros(1), jnp.ones(1)))

    with pytest.raises(Exception, match="loc_q"):  # noqa: PT011
        _run(model_dup, _safety_guide)


def test_extra_samples():
    """Pyro warns (guide site loc_q_2 not in the model); stackvi raises, naming it."""
    def model():
        numpyro.sample("loc_q", dist.Normal(jnp.zeros(1), jnp.ones(1)))

    with pytest.raises(Exception, match="loc_q_2"):  # noqa: PT011
        _run(model, _safety_guide)


def test_duplicate_obs_name():
    def model_obs_dup():
        numpyro.sample("loc_q", dist.Normal(jnp.zeros(1), jnp.ones(1)))
        numpyro.sample("loc_q", dist.Normal(jnp.zeros(1), jnp.ones(1)), obs=jnp.zeros(1))

    with pytest.raises(Exception, match="loc_q"):  # noqa: PT011
        _run(model_obs_dup, _safety_guide)


# --------------------------------------------------------------------------- issue 2361 cases

PLATING_DATA = np.array([-0.3, 0.8, 0.1, -1.2, 0.4, 1.9, 0.7, 1.3, 0.2, 1.1], np.float32)


@pytest.mark.slow
def test_sequential_plating_sum():
    """RenyiELBO(α = 0, 30 particles) with a Bernoulli guide: exact via the Binomial count."""
    k = 30

    def model(data):
        x = numpyro.sample("x", dist.Bernoulli(0.5))
        for i in range(len(data)):
            numpyro.sample(f"data_{i:d}", dist.Normal(x, scale=0.1), obs=data[i])

    def guide(data):
        p = numpyro.param("p", 0.5, constraint=constraints.unit_interval)
        numpyro.sample("x", dist.Bernoulli(p))

    data = jnp.asarray(PLATING_DATA)

    def exact(u):
        p = jax.nn.sigmoid(u["p"])
        lp = jnp.stack([math.log(0.5) + log_normal(data, float(x), 0.1).sum() for x in (0, 1)])
        lw = lp - jnp.log(jnp.stack([1 - p, p]))  # log weight of x = 0, 1
        m = jnp.arange(k + 1)  # particles with x = 1
        log_binom = (gammaln(k + 1.0) - gammaln(m + 1.0) - gammaln(k - m + 1.0)
                     + m * jnp.log(p) + (k - m) * jnp.log1p(-p))
        safe = jnp.logaddexp(jnp.log(jnp.maximum(m, 1e-30)) + lw[1],
                             jnp.log(jnp.maximum(k - m, 1e-30)) + lw[0]) - jnp.log(k)
        return jnp.sum(jnp.exp(log_binom) * safe)

    obj = estimators.renyi(model, guide, alpha=0.0, num_particles=k)
    params = {"p": jnp.float32(0.3)}  # σ⁻¹(p) ≈ 0.57, away from logits = 0
    exact_value, exact_grads = jax.value_and_grad(exact)(params)
    values, grads = per_key(obj, params, N_KEYS, data)
    assert_unbiased(values, exact_value, "value")
    assert_unbiased(grads["p"], exact_grads["p"], "grad p")


@pytest.mark.slow
def test_non_nested_plating_sum():
    def model(data, weights):
        loc, scale = 1.0, 0.1
        with numpyro.plate("x_plate", weights.shape[0]):
            x = numpyro.sample("x", dist.Normal(loc, scale))
        with numpyro.plate("data_plate_1", data.shape[-1]):
            with numpyro.plate("data_plate_2", data.shape[-2]):
                numpyro.sample("data", dist.Normal(x @ weights, scale), obs=data)

    def guide(data, weights):
        loc = numpyro.param("x_loc", 0.5)
        with numpyro.plate("x_plate", weights.shape[0]):
            numpyro.sample("x", dist.Normal(loc, 0.1))

    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)
    obj = estimators.renyi(model, guide, alpha=0.0, num_particles=30)
    params = obj.init(jax.random.PRNGKey(0), data, weights)
    value, grads = obj.value_and_grad(params, jax.random.PRNGKey(1), data, weights)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grads["x_loc"])))
