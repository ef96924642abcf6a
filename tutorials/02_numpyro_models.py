# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Existing NumPyro models, trained with stackvi
#
# stackvi's handlers are NumPyro `Messenger`s and its primitives are NumPyro's, so
# a model and guide written for NumPyro run under stackvi *unchanged*: no import
# of stackvi in the model file, no edits. Here we take two of them:
#
# 1. **Eight schools** (the hierarchical model from NumPyro's docs, non-centered
#    with NumPyro's own `LocScaleReparam`) with NumPyro's `AutoNormal` guide. We
#    train it with `sv.fit` and with NumPyro's `SVI`, and we choose gradient
#    strategies for its sites *from outside* the guide.
# 2. **Bayesian logistic regression** on scikit-learn's breast-cancer data, with
#    data subsampling (`numpyro.plate(..., subsample_size=...)`), again with an
#    `AutoNormal` guide.

# %%
import os
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.handlers import reparam
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.reparam import LocScaleReparam
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

import stackvi as sv
from stackvi import estimators, handlers

# tutorials/figures whether this runs from the repository root or from tutorials/
FIGDIR = os.environ.get("STACKVI_FIGDIR") or (
    "figures" if os.path.basename(os.getcwd()) == "tutorials" else "tutorials/figures")
os.makedirs(FIGDIR, exist_ok=True)

# %% [markdown]
# ## 1. Eight schools
#
# Plain NumPyro code, as in NumPyro's documentation:

# %%
J = 8
y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
sigma = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


model = reparam(eight_schools, config={"theta": LocScaleReparam(centered=0)})
guide = AutoNormal(model)

# %% [markdown]
# Train the same model and guide with stackvi and with NumPyro's `SVI` (same
# optimizer, same number of steps), then score both fits with NumPyro's own
# `Trace_ELBO`, averaged over many keys.

# %%
steps = 1500
opt = optax.adam(optax.exponential_decay(0.02, steps, 0.1))
result = sv.fit(estimators.elbo(model, guide, num_particles=4), jax.random.PRNGKey(0),
                J, sigma, y, optimizer=opt, num_steps=steps, progress=False)
svi = SVI(model, guide, opt, Trace_ELBO(num_particles=4))
svi_result = svi.run(jax.random.PRNGKey(0), steps, J, sigma, y, progress_bar=False)


@jax.jit
def _elbo_samples(params, keys):
    return jax.vmap(lambda k: -Trace_ELBO().loss(k, params, model, guide, J, sigma, y))(keys)


def elbo_of(params, n=2000):
    """NumPyro's Trace_ELBO at ``params`` (constrained), one particle per key: mean, s.e."""
    vals = _elbo_samples(params, jax.random.split(jax.random.PRNGKey(123), n))
    return float(vals.mean()), float(vals.std() / np.sqrt(n))


elbo_sv, se_sv = elbo_of(result.params)
elbo_np, se_np = elbo_of(svi_result.params)
print(f"ELBO  stackvi fit: {elbo_sv:.3f} ± {se_sv:.3f}   "
      f"NumPyro SVI fit: {elbo_np:.3f} ± {se_np:.3f}")
# Both runs converge to the same optimum of the same objective; what separates them is the
# evaluation's MC error plus the optimizers' own noise (a few hundredths of a nat here).
assert abs(elbo_sv - elbo_np) < 4 * np.hypot(se_sv, se_np) + 0.1

q_sv = guide.median(result.params)
q_np = guide.median(svi_result.params)
print(f"posterior median of mu:  stackvi {float(q_sv['mu']):.2f}   NumPyro {float(q_np['mu']):.2f}")

# %% [markdown]
# ### Choosing strategies from outside
#
# `AutoNormal` samples the model's own site names (`mu`, `tau`,
# `theta_decentered`). Wrapping the *unchanged* guide in a strategy handler picks
# the gradient rule per site; here we force the score-function estimator (with a
# leave-one-out baseline over 8 particles) on `mu`, and compare its gradient with
# the default pathwise one. Both are unbiased, so their means must agree within
# their Monte Carlo error; their spreads show what each estimator costs.

# %%
annotated = handlers.strategies(guide, {"reinforce": ["mu"]}, reinforce={"baseline": "loo"})
objs = {"pathwise (default)": estimators.elbo(model, guide, num_particles=8),
        "reinforce + leave-one-out on mu": estimators.elbo(model, annotated, num_particles=8)}
raw = result.raw_params
keys = jax.random.split(jax.random.PRNGKey(7), 2000)
g = {label: np.asarray(jax.jit(jax.vmap(
        lambda k, o=o: o.value_and_grad(raw, k, J, sigma, y)[1]["mu_auto_loc"]))(keys))
     for label, o in objs.items()}
for label, samples in g.items():
    print(f"{label:32s} dELBO/d mu_loc: mean {samples.mean():+.4f} ± "
          f"{samples.std() / np.sqrt(samples.size):.4f}, std {samples.std():.3f}")
a, b = g.values()
assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std(), b.std()) / np.sqrt(a.size)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].plot(np.arange(1, steps + 1), result.history, lw=0.4, label="stackvi")
axes[0].plot(np.arange(1, steps + 1), -svi_result.losses, lw=0.4, alpha=0.6, label="NumPyro SVI")
axes[0].set_xscale("log")
axes[0].set_ylim(elbo_sv - 15, elbo_sv + 5)
axes[0].set_xlabel("step")
axes[0].set_ylabel("ELBO estimate")
axes[0].legend()
samples = guide.sample_posterior(jax.random.PRNGKey(1), result.params, sample_shape=(2000,))
theta = samples["theta"]
axes[1].errorbar(np.arange(J), theta.mean(0), yerr=2 * theta.std(0), fmt="o", label="theta (±2 sd)")
axes[1].plot(np.arange(J), y, "kx", label="observed y")
axes[1].axhline(float(samples["mu"].mean()), color="C1", ls="--", label="mu")
axes[1].set_xlabel("school")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(FIGDIR, "02_eight_schools.png"))
# Partial pooling: every school's estimate is pulled from its own y toward mu.
shrunk = jnp.abs(theta.mean(0) - samples["mu"].mean()) < jnp.abs(y - samples["mu"].mean())
assert bool(jnp.all(shrunk | (jnp.abs(y - samples["mu"].mean()) < 1.0)))

# %% [markdown]
# ## 2. Logistic regression on real data, with subsampling
#
# 569 tumours, 30 features (standardized). The model subsamples 64 data points per
# step; NumPyro's plate scales their log-likelihood by 569/64, so the ELBO estimate
# stays unbiased for the full-data ELBO.

# %%
data = load_breast_cancer()
X = (data.data - data.data.mean(0)) / data.data.std(0)
X, labels = jnp.asarray(X, jnp.float32), jnp.asarray(data.target, jnp.float32)
N, D = X.shape


def logistic(X, labels=None, batch=64):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    with numpyro.plate("data", X.shape[0], subsample_size=batch) as idx:
        logits = X[idx] @ w + b
        numpyro.sample("y", dist.Bernoulli(logits=logits),
                       obs=None if labels is None else labels[idx])


lr_guide = AutoNormal(logistic)
lr_result = sv.fit(estimators.elbo(logistic, lr_guide), jax.random.PRNGKey(3), X, labels,
                   optimizer=optax.adam(optax.exponential_decay(0.05, 1000, 0.1)),
                   num_steps=1000, progress=False)
post = lr_guide.median(lr_result.params)
accuracy = float(jnp.mean(((X @ post["w"] + post["b"]) > 0) == (labels > 0.5)))
sk_accuracy = LogisticRegression(max_iter=2000).fit(np.asarray(X), data.target).score(
    np.asarray(X), data.target)
print(f"training accuracy: stackvi posterior median {accuracy:.3f}, sklearn {sk_accuracy:.3f}")
assert accuracy > 0.95 and accuracy >= sk_accuracy - 0.02

# %%
w_loc = lr_result.params["w_auto_loc"]
w_scale = lr_result.params["w_auto_scale"]
order = np.argsort(np.asarray(w_loc))
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [1, 2]})
n_steps = len(lr_result.history)
axes[0].plot(np.arange(1, n_steps + 1), lr_result.history, lw=0.3, alpha=0.5, label="per step")
smooth = np.convolve(lr_result.history, np.ones(50) / 50, mode="valid")
axes[0].plot(np.arange(50, n_steps + 1), smooth, color="C1", label="running mean (50)")
axes[0].legend(fontsize=8)
axes[0].set_xscale("log")
axes[0].set_xlabel("step")
axes[0].set_ylabel("ELBO estimate (64-point minibatches)")
axes[0].set_ylim(float(np.percentile(lr_result.history, 1)) - 50, None)
axes[1].errorbar(np.arange(D), np.asarray(w_loc)[order], yerr=2 * np.asarray(w_scale)[order],
                 fmt="o", ms=3)
axes[1].set_xticks(np.arange(D))
axes[1].set_xticklabels(np.asarray(data.feature_names)[order], rotation=90, fontsize=7)
axes[1].axhline(0, color="k", lw=0.5)
axes[1].set_ylabel("weight (posterior mean ± 2 sd)")
fig.tight_layout()
fig.savefig(os.path.join(FIGDIR, "02_logistic_regression.png"))

# %% [markdown]
# ## 3. The eight-schools fit in ArviZ
#
# `sv.to_arviz` draws from the fitted guide, runs the model on each draw for the
# posterior predictive, and returns an `arviz.InferenceData` (install with
# `pip install 'stackvi[arviz]'`), so ArviZ's summaries and plots apply to a stackvi
# fit. Plate dimensions carry the plate's name (`J`); the model's deterministic `theta`
# (rebuilt by `LocScaleReparam` from `theta_decentered`) is in the posterior too. The
# draws are independent samples of the guide, not a Markov chain: ESS and r-hat have
# nothing to diagnose, so the summary shows the statistics only.

# %%
with warnings.catch_warnings():  # ArviZ 0.2x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

n_draws = 4000
idata = sv.to_arviz(result, model, guide, J, sigma, y, num_samples=n_draws)
summary = az.summary(idata, var_names=["mu", "tau", "theta"], kind="stats")
# mu's guide is Normal(loc, scale): its draws' mean is within 4 standard errors of loc.
mu_loc = float(result.params["mu_auto_loc"])
assert abs(summary.loc["mu", "mean"] - mu_loc) < 4 * summary.loc["mu", "sd"] / np.sqrt(n_draws)
assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "J")
summary  # noqa: B018 (a notebook shows the table)

# %%
az.plot_forest(idata, var_names=["mu", "theta"], combined=True, hdi_prob=0.9,
               figsize=(7, 4))
plt.gcf().tight_layout()
plt.gcf().savefig(os.path.join(FIGDIR, "02_eight_schools_arviz.png"))
