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
# # stackvi quickstart: composing handlers
#
# stackvi runs ordinary NumPyro programs under a stack of small *handlers*. This
# notebook builds everything up by hand, one handler at a time:
#
# 1. write a model and trace it,
# 2. score it with `density` and check the number against a closed form,
# 3. write a guide, turn it into an ELBO, and switch the gradient strategy of a
#    site (pathwise vs score function, with and without a baseline),
# 4. look at what a strategy does to a trace,
# 5. fit, and compare with the exact posterior.
#
# The model is the conjugate Normal–Normal model, so every number has an exact
# answer to compare with.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro.distributions as dist
import optax
from numpyro.distributions import constraints

import stackvi as sv
from stackvi import estimators, handlers

# tutorials/figures whether this runs from the repository root or from tutorials/
FIGDIR = os.environ.get("STACKVI_FIGDIR") or (
    "figures" if os.path.basename(os.getcwd()) == "tutorials" else "tutorials/figures")
os.makedirs(FIGDIR, exist_ok=True)

# %% [markdown]
# ## 1. A model, traced
#
# `z ~ N(μ0, s0²)`, `x_i | z ~ N(z, s²)`. stackvi's `observe` is `numpyro.sample(...,
# obs=...)`; a plain NumPyro model would work the same.

# %%
MU0, S0, S = 0.0, 2.0, 1.0
x = jnp.array([1.9, 2.4, 1.1, 3.0, 2.2, 1.6])


def model(x):
    z = sv.sample("z", dist.Normal(MU0, S0))
    with sv.plate("data", x.shape[0]):
        sv.observe("x", dist.Normal(z, S), x)


tr = handlers.trace(handlers.seed(model, 0)).get_trace(x)
for name, site in tr.items():
    print(f"{name:5s} {site['type']:7s} observed={site.get('is_observed')} "
          f"shape={jnp.shape(site['value'])}")

# %% [markdown]
# ## 2. Scoring with `density`
#
# `density` records the log-density of every sample site, *term by term*, with
# one named axis per plate. That structure is what later lets REINFORCE give each
# data point only its own cost.

# %%
with handlers.density() as d:
    handlers.substitute(model, {"z": 1.5})(x)
print({t.label: (t.names, t.array.shape) for t in d.terms.terms})
exact = float(dist.Normal(MU0, S0).log_prob(1.5) + dist.Normal(1.5, S).log_prob(x).sum())
print(f"log p(x, z=1.5) = {float(d.log_joint):.5f}  (closed form {exact:.5f})")
assert abs(float(d.log_joint) - exact) < 1e-4

# %% [markdown]
# ## 3. A guide, an ELBO, and gradient strategies
#
# The guide is `N(m, v²)`. `estimators.elbo` is a ten-line program over these
# effects: simulate the guide, score the model at its samples, average. By default
# a site with a reparameterized sampler (the Normal here) gets pathwise gradients.
# Wrapping the guide in `handlers.reinforce(...)` switches that site to the score
# function, without touching the guide's code.

# %%
def guide(x):
    m = sv.param("m", 0.0)
    v = sv.param("v", 1.0, constraint=constraints.positive)
    sv.sample("z", dist.Normal(m, v))


n = x.shape[0]
post_prec = 1 / S0**2 + n / S**2
post_mean = float((MU0 / S0**2 + x.sum() / S**2) / post_prec)
post_sd = float(post_prec**-0.5)


def exact_grad_m(m, v):  # DESIGN.md §7
    return -(m - MU0) / S0**2 + float(jnp.sum(x - m)) / S**2


params = {"m": jnp.float32(0.5), "v": jnp.log(jnp.float32(0.8))}  # unconstrained
keys = jax.random.split(jax.random.PRNGKey(1), 2000)
choices = {
    "pathwise (default)": estimators.elbo(model, guide),
    "reinforce": estimators.elbo(model, handlers.reinforce(guide, sites=["z"])),
    "reinforce + moving average": estimators.elbo(
        model, handlers.reinforce(guide, sites=["z"], baseline="ema")),
}
def grad_m_samples(obj, state=None):
    """dELBO/dm at ``params``, one estimate per key (vmapped, jitted)."""
    if state is None:
        f = lambda k: obj.value_and_grad(params, k, x)[1]["m"]
    else:
        f = lambda k: obj.value_and_grad_with_state(params, state, k, x)[1]["m"]
    return np.asarray(jax.jit(jax.vmap(f))(keys))


grad_samples = {label: grad_m_samples(obj) for label, obj in choices.items()
                if not label.endswith("average")}
# A moving average's state is threaded through the steps by sv.fit; here we warm it by hand
# with the mean ELBO over *other* keys (a baseline independent of the current sample keeps
# the estimator unbiased).
ema_obj = choices["reinforce + moving average"]
warm_keys = jax.random.split(jax.random.PRNGKey(9), 500)
warm = float(jnp.mean(jax.vmap(lambda k: ema_obj.estimate(params, k, x))(warm_keys)))
state = {name: type(st)(jnp.float32(warm), jnp.float32(1.0))
         for name, st in ema_obj.init_state(params, keys[0], x).items()}
grad_samples["reinforce + moving average"] = grad_m_samples(ema_obj, state)

truth = exact_grad_m(0.5, 0.8)
for label, g in grad_samples.items():
    se = g.std() / np.sqrt(g.size)
    print(f"{label:28s} mean {g.mean():8.3f} ± {se:.3f}  std {g.std():7.3f}   exact {truth:.3f}")
    assert abs(g.mean() - truth) < 4 * se + 1e-3  # every strategy is unbiased
assert grad_samples["pathwise (default)"].std() < grad_samples["reinforce"].std()
assert grad_samples["reinforce + moving average"].std() < grad_samples["reinforce"].std()

fig, ax = plt.subplots(figsize=(7, 3.5))
bins = np.linspace(truth - 60, truth + 60, 121)
for label, g in grad_samples.items():
    ax.hist(g, bins=bins, histtype="step", density=True, label=label)
ax.axvline(truth, color="k", ls="--", label="exact")
ax.set_xlabel("dELBO/dm, one sample each")
ax.set_xlim(truth - 60, truth + 60)
ax.legend(fontsize=8)
ax.set_title("Same gradient, three estimators")
fig.tight_layout()
fig.savefig(os.path.join(FIGDIR, "01_gradient_estimators.png"))

# %% [markdown]
# ## 4. What a strategy does to a trace
#
# `simulate` runs a guide under its strategies. A REINFORCE site's value is
# detached from the parameters (its gradient comes from the score term instead),
# and its log-density is registered as a *node* that the estimator turns into a
# score-function term.

# %%
from stackvi.gradients import recording  # noqa: E402

with handlers.substitute(data={"m": 0.5, "v": 0.8}), recording() as rec:
    gtr = handlers.simulate(handlers.seed(handlers.reinforce(guide), 0), x)
print("strategy of z:", gtr["z"]["infer"]["strategy"])
print("score-function records:", [(nd.name, nd.log_prob.names) for nd in rec.records])
assert gtr["z"]["infer"]["strategy"] == "reinforce" and [nd.name for nd in rec.records] == ["z"]

# %% [markdown]
# ## 5. Fit
#
# `sv.fit` runs optax in compiled chunks. The Normal guide family contains the
# exact posterior, so the fit should land on it.

# %%
result = sv.fit(estimators.elbo(model, guide, num_particles=16), jax.random.PRNGKey(2), x,
                optimizer=optax.adam(optax.exponential_decay(0.05, 1500, 0.01)),
                num_steps=1500, progress=False)
m_fit, v_fit = float(result.params["m"]), float(result.params["v"])
print(f"fit: m = {m_fit:.4f}, v = {v_fit:.4f};  exact posterior: {post_mean:.4f}, {post_sd:.4f}")
kl = np.log(post_sd / v_fit) + (v_fit**2 + (m_fit - post_mean) ** 2) / (2 * post_sd**2) - 0.5
print(f"KL(guide || exact posterior) = {kl:.2e} nats")
assert kl < 1e-3

log_evidence = float(dist.MultivariateNormal(
    jnp.full(n, MU0), S0**2 * jnp.ones((n, n)) + S**2 * jnp.eye(n)).log_prob(x))

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(np.arange(1, len(result.history) + 1), result.history, lw=0.5,
             label="ELBO estimate")
axes[0].axhline(log_evidence, color="k", ls="--", label="log p(x)")
axes[0].set_ylim(log_evidence - 10, log_evidence + 2)
axes[0].set_xscale("log")
axes[0].set_xlabel("step")
axes[0].legend()
zs = jnp.linspace(post_mean - 4 * post_sd, post_mean + 4 * post_sd, 200)
axes[1].plot(zs, jnp.exp(dist.Normal(post_mean, post_sd).log_prob(zs)), "k--", label="exact")
axes[1].plot(zs, jnp.exp(dist.Normal(m_fit, v_fit).log_prob(zs)), label="guide")
axes[1].set_xlabel("z")
axes[1].legend()
fig.tight_layout()
fig.savefig(os.path.join(FIGDIR, "01_fit.png"))
print(f"log p(x) = {log_evidence:.4f}, mean of last 300 ELBO estimates = "
      f"{result.history[-300:].mean():.4f}")
assert abs(result.history[-300:].mean() - log_evidence) < 0.05
