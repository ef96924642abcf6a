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
# # 07 — KL-regularized fine-tuning is variational inference
#
# Fine-tuning a language model with reinforcement learning usually maximizes
# a reward *minus a KL penalty* to the pretrained model π₀:
#
#     J(π) = E_π[r(x)] − β · KL(π ‖ π₀).
#
# Korbak, Perez and Buckley ("RL with KL penalties is better viewed as
# Bayesian inference", 2022) point out that maximizing J is not reward
# maximization at all but variational inference, with the target
#
#     p*(x) = π₀(x) · exp(r(x)/β) / Z,
#
# π₀ as the prior and `exp(r/β)` as the likelihood. This tutorial makes the
# argument executable on a model small enough to enumerate: every number in
# the tables and plots is computed **exactly**, by summing over all sequences,
# never from a Monte Carlo estimate.
#
# * π₀ and p* are NumPyro programs; the policy π_θ is a NumPyro guide.
# * We fine-tune π_θ four ways, each a stackvi objective (a program over the
#   same effects): (a) plain REINFORCE on the reward, (b) the ELBO of
#   `π₀ + factor(r/β)` (= KL-regularized RL), (c) IWAE (with VIMCO's
#   leave-one-out signals) and reweighted wake-sleep (forward KL).
# * We check, not just state, that (b) is KL-regularized RL.

# %%
import itertools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer.util import log_density

import stackvi as sv
from stackvi import estimators, handlers
from stackvi.estimators import Objective, particles, score_model
from stackvi.handlers import simulate, trace_terms
from stackvi.terms import Term, Terms

FIGDIR = os.environ.get("STACKVI_FIGDIR") or (
    "figures" if os.path.basename(os.getcwd()) == "tutorials" else "tutorials/figures")
os.makedirs(FIGDIR, exist_ok=True)
# STACKVI_SMOKE=1 (the test suite): fewer steps, same checks
SMOKE = os.environ.get("STACKVI_SMOKE", "0") not in ("", "0")
STEPS, EVERY = (1000, 20) if SMOKE else (2000, 20)  # compiling dominates the time
K = 16  # particles per step, for every objective

# %% [markdown]
# ## The pretrained model π₀, the reward and the target p*
#
# Sequences of `T = 6` tokens from `{A, B, C, D}`: 4⁶ = 4096 of them. π₀ is a
# Markov chain that rarely says `D` (5–10%) and likes the cycle A → B → C → A.
# Written as a NumPyro program, one Categorical site per position:

# %%
TOKENS = "ABCD"
V, T, BETA = 4, 6, 0.5
PI0_FIRST = jnp.log(jnp.array([0.45, 0.30, 0.20, 0.05]))
PI0_NEXT = jnp.log(jnp.array([[0.20, 0.50, 0.25, 0.05],  # row: previous token
                              [0.15, 0.20, 0.60, 0.05],
                              [0.50, 0.20, 0.25, 0.05],
                              [0.30, 0.30, 0.30, 0.10]]))


def sequence(first_logits, next_logits):
    """x₀ ~ first, xₜ | xₜ₋₁ ~ next[t−1][xₜ₋₁]: an autoregressive sampler."""
    xs = []
    for t in range(T):
        logits = first_logits if t == 0 else next_logits[t - 1][xs[-1]]
        xs.append(numpyro.sample(f"x{t}", dist.Categorical(logits=logits)))
    return xs


def prior():
    """π₀: frozen, no parameters."""
    return sequence(PI0_FIRST, jnp.broadcast_to(PI0_NEXT, (T - 1, V, V)))


# %% [markdown]
# The reward asks for the keyword `D` (one point per `D`) and for a "rhyme":
# two points if the last token repeats the first. The best sequence is
# `DDDDDD` (reward 8). The rhyme couples the first and the last token, which
# a first-order policy cannot express exactly — so each objective below has
# to *choose* how to approximate p*, and they choose differently.
#
# The target is π₀ with one extra `factor` — the unchanged prior program plus
# a log-likelihood `r(x)/β`:


# %%
def reward(xs):
    """r(x) for a list of token arrays (any broadcastable batch shapes)."""
    keyword = sum((x == 3).astype(jnp.float32) for x in xs)
    rhyme = 2.0 * (xs[0] == xs[-1]).astype(jnp.float32)
    return keyword + rhyme


def target():
    """π₀(x) · exp(r(x)/β), unnormalized: its normalized posterior is p*."""
    xs = prior()
    numpyro.factor("reward", reward(xs) / BETA)


# %% [markdown]
# The policy π_θ has its own logits for the first token and one transition
# matrix *per position* (an autoregressive model with 4 + 5·16 logits),
# initialised at π₀:


# %%
def policy():
    first = numpyro.param("first_logits", PI0_FIRST)
    nxt = numpyro.param("next_logits", jnp.broadcast_to(PI0_NEXT, (T - 1, V, V)))
    return sequence(first, nxt)


# %% [markdown]
# ## Exact answers by enumeration
#
# All 4096 sequences, scored by NumPyro's `log_density` *of the programs
# themselves* (vectorized over sequences): log π₀(x), the unnormalized
# log p*(x), log Z, and for any policy parameters log π_θ(x). From them:
# KL(π‖p*), KL(p*‖π), E_π[r] and the entropy H(π).

# %%
X = jnp.array(list(itertools.product(range(V), repeat=T)))  # (4096, T)
R = reward(list(X.T))


def log_prob_all(program, params=None):
    """log program(x) for every sequence x, by NumPyro's log_density."""
    def one(x):
        values = {f"x{t}": x[t] for t in range(T)}
        return log_density(program, (), {}, {**values, **(params or {})})[0]
    return jax.vmap(one)(X)


log_pi0 = log_prob_all(prior)
log_joint = log_prob_all(target)  # log π₀(x) + r(x)/β
LOG_Z = jax.nn.logsumexp(log_joint)
log_pstar = log_joint - LOG_Z
assert jnp.allclose(log_joint, log_pi0 + R / BETA, atol=1e-5)
assert abs(float(jax.nn.logsumexp(log_pi0))) < 1e-5  # π₀ sums to one


def exact_metrics(log_q):
    q, p = jnp.exp(log_q), jnp.exp(log_pstar)
    return {"KL(π‖p*)": jnp.sum(q * (log_q - log_pstar)),
            "KL(p*‖π)": jnp.sum(p * (log_pstar - log_q)),
            "E_π[r]": jnp.sum(q * R),
            "H(π)": -jnp.sum(q * log_q)}


# %% [markdown]
# During training we evaluate the policy thousands of times, so we also write
# its log-probability table directly: a sum of broadcast log-softmax arrays
# over the 4⁶ grid (in the order of `X`). It must agree with NumPyro's
# `log_density` of `policy` — checked at π₀ here and at every trained policy
# below.


# %%
def log_policy_all(params):
    """log π_θ(x) for every x in X, as an array over the grid of sequences."""
    lp = jax.nn.log_softmax(params["first_logits"])
    nxt = jax.nn.log_softmax(params["next_logits"], axis=-1)
    for t in range(1, T):  # add log π(xₜ | xₜ₋₁) along the last two grid axes
        lp = lp[..., None] + nxt[t - 1].reshape((1,) * (t - 1) + (V, V))
    return lp.reshape(-1)


policy_log_density = jax.jit(lambda params: log_prob_all(policy, params))


def check_policy_table(params):
    assert jnp.allclose(log_policy_all(params), policy_log_density(params), atol=1e-4)


@jax.jit
def policy_metrics(params):
    return exact_metrics(log_policy_all(params))


params0 = {"first_logits": PI0_FIRST, "next_logits": jnp.broadcast_to(PI0_NEXT, (T - 1, V, V))}
check_policy_table(params0)
assert jnp.allclose(log_policy_all(params0), log_pi0, atol=1e-5)  # the policy starts at π₀

print(f"log Z = {float(LOG_Z):.4f}")
print(f"E_π₀[r] = {float(jnp.sum(jnp.exp(log_pi0) * R)):.3f}, "
      f"E_p*[r] = {float(jnp.sum(jnp.exp(log_pstar) * R)):.3f}")

# %% [markdown]
# ### The best each divergence can do
#
# Because the rhyme is out of the policy's reach, no θ makes π_θ = p*. The
# best policy under each divergence is a reference for the trained ones:
#
# * **forward KL**, `min KL(p*‖π_θ)`: moment matching. For a first-order
#   policy the minimizer is p*'s own first-token marginal and per-position
#   transition probabilities — closed form, from p*'s pair marginals;
# * **reverse KL**, `min KL(π_θ‖p*)`: no closed form, and not convex in θ. We
#   run exact gradient descent (on the enumerated KL) from π₀ and from eight
#   random starts.

# %%
pstar = jnp.exp(log_pstar)
forward_projection = {
    "first_logits": jnp.log(jnp.zeros(V).at[X[:, 0]].add(pstar)),
    "next_logits": jnp.stack([jnp.log(jnp.zeros((V, V)).at[X[:, t - 1], X[:, t]].add(pstar))
                              for t in range(1, T)]),  # log p*(a, b): rows normalize in softmax
}


@jax.jit
def reverse_projection(params):
    opt = optax.adam(0.05)

    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda p: policy_metrics(p)["KL(π‖p*)"])(p)
        u, s = opt.update(g, s)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=3000)
    return params


starts = jax.tree_util.tree_map(
    lambda a, k: jnp.concatenate([a[None], 2.0 * jax.random.normal(k, (8, *a.shape))]),
    params0, {"first_logits": jax.random.PRNGKey(1), "next_logits": jax.random.PRNGKey(2)})
solutions = jax.vmap(reverse_projection)(starts)
local_kl = jax.vmap(lambda p: policy_metrics(p)["KL(π‖p*)"])(solutions)
best = int(jnp.argmin(local_kl))
reverse_from_pi0 = jax.tree_util.tree_map(lambda a: a[0], solutions)
reverse_best = jax.tree_util.tree_map(lambda a: a[best], solutions)
print("reverse-KL optima reached (from π₀, then random starts):", np.round(local_kl, 3))


def first_token(params):
    probs = np.asarray(jax.nn.softmax(params["first_logits"])).tolist()
    return {t: round(p, 2) for t, p in zip(TOKENS, probs, strict=True)}


print("first token of the local optimum from π₀:", first_token(reverse_from_pi0))
print("first token of the best optimum:        ", first_token(reverse_best))

# %% [markdown]
# Reverse KL has several local optima here (the values above). The two that
# most starts reach both commit to a single first token, so that the last
# token can rhyme with it: one to `A`, π₀'s favourite opening, the other to
# `D`, the keyword. That is the mode-seeking behaviour of reverse KL — and
# reverse KL is what KL-regularized RL minimizes, as we see next.
#
# ## The objectives, as programs
#
# **(a) REINFORCE on the reward alone**, `E_π[r]`: a program that simulates
# the policy and returns the reward. It returns `Terms` (one per particle),
# so each site's learning signal is its own particle's reward and the
# leave-one-out baseline applies, as for (b) — the only difference between
# (a) and (b) is the objective.


# %%
def sequence_of(trace):
    return [trace[f"x{t}"]["value"] for t in range(T)]


def expected_reward(guide, num_particles):
    def program():
        def one():
            return Terms((Term("reward", reward(sequence_of(simulate(guide)))),))
        return particles(one, num_particles)().mean(sv.PARTICLES)
    return Objective(program, prior, guide, name="expected_reward")


# %% [markdown]
# **(b) The ELBO**, the library's `elbo` of the model `target` (π₀ plus the
# reward factor) with the policy as guide. Why it is KL-regularized RL:
#
#     ELBO(π) = E_π[log π₀(x) + r(x)/β − log π(x)]
#             = (E_π[r] − β · KL(π ‖ π₀)) / β
#             = J(π) / β,
#
# and, writing log p*(x) = log π₀(x) + r(x)/β − log Z,
#
#     ELBO(π) = log Z − KL(π ‖ p*).
#
# So maximizing the KL-penalized reward *is* minimizing KL(π‖p*) (log Z does
# not depend on π): its optimum over all distributions is π = p* itself, π₀
# reweighted by exp(r/β) — a distribution, not a point mass. Plain RL is the
# limit β → 0, where p* collapses onto argmax r.
#
# The policy's sites are discrete, so stackvi differentiates them by
# REINFORCE; `handlers.reinforce(policy, baseline="loo")` gives each of the K
# particles the mean learning signal of the other K − 1 as its baseline.
#
# The penalty can also be written the RL way, as a program: reward minus
# β·(log π − log π₀) at the sampled sequence, π₀ scored at the policy's
# values by `score_model`:


# %%
def kl_regularized_reward(guide, num_particles, beta):
    def program():
        def one():
            tr = simulate(guide)
            log_pi0 = trace_terms(score_model(prior, tr), prefix="p0:")
            log_pi = trace_terms(tr, prefix="q:")
            return Terms((Term("reward", reward(sequence_of(tr))),)) + beta * (log_pi0 - log_pi)
        return particles(one, num_particles)().mean(sv.PARTICLES)
    return Objective(program, prior, guide, name="kl_regularized_reward")


# %% [markdown]
# **(c) Two other objectives from the library**, over the same model and policy:
#
# * **IWAE**, `log 1/K Σₖ p(x, zₖ)/π(zₖ)` — a tighter bound on log Z than the
#   ELBO; its optimal policy is no longer the reverse-KL projection but a
#   more mass-covering one. `estimators.vimco` is the IWAE bound with VIMCO's
#   leave-one-out learning signals (plain IWAE gives REINFORCE the whole
#   bound as signal, which is far noisier).
# * **Reweighted wake-sleep** (wake-q), `estimators.rws`: K policy samples
#   reweighted by self-normalized importance sampling approximate p*, and the
#   policy ascends `Σₖ w̄ₖ ∇ log π(zₖ)` — an estimate of −∇ KL(p*‖π), the
#   *forward* KL. Samples are never differentiated, so no score-function
#   estimator is involved at all.

# %%
loo_policy = handlers.reinforce(policy, baseline="loo")
objectives = {
    "(a) REINFORCE, E[r]": expected_reward(loo_policy, K),
    "(b) ELBO = KL-reg. RL": estimators.elbo(target, loo_policy, num_particles=K),
    "(c) IWAE (VIMCO)": estimators.vimco(target, policy, num_particles=K),
    "(c) RWS (wake-q)": estimators.rws(target, policy, num_particles=K),
}

# %% [markdown]
# ## Fine-tuning
#
# One optax loop for all four (Adam, step size 0.05 decaying to 0.005 on a
# cosine schedule, K = 16 particles), compiled as one `scan`; every 20 steps we
# record the exact metrics of the current policy (by enumeration, not from
# stackvi's estimates).

# %%
optimizer = optax.adam(optax.cosine_decay_schedule(0.05, STEPS, alpha=0.1))


def fine_tune(objective, key):
    params = objective.init(jax.random.PRNGKey(0))

    def step(carry, k):
        params, state = carry
        _, grads = objective.value_and_grad(params, k)  # ascent directions
        updates, state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads), state)
        return (optax.apply_updates(params, updates), state), None

    def chunk(carry, k):
        carry, _ = jax.lax.scan(step, carry, jax.random.split(k, EVERY))
        return carry, policy_metrics(carry[0])

    @jax.jit
    def run(carry, key):
        return jax.lax.scan(chunk, carry, jax.random.split(key, STEPS // EVERY))

    (params, _), history = run((params, optimizer.init(params)), key)
    start = policy_metrics(params0)
    history = {m: np.concatenate([[float(start[m])], np.asarray(v)]) for m, v in history.items()}
    return params, history


trained, histories = {}, {}
for i, (name, objective) in enumerate(objectives.items()):
    trained[name], histories[name] = fine_tune(objective, jax.random.PRNGKey(100 + i))
    check_policy_table(trained[name])  # the fast table = NumPyro's log_density of the policy
    print(f"{name:24s}", "  ".join(f"{m} {v[-1]:7.3f}" for m, v in histories[name].items()))

# %% [markdown]
# ## Checking the identities
#
# **The ELBO is log Z − KL(π‖p*).** stackvi can compute the ELBO exactly:
# under `handlers.enumerate` the policy's six sites are summed over all their
# values (4096 sequences, laid out along enumeration dimensions) instead of
# sampled. That is stackvi's machinery on the programs; the right-hand side
# is our own enumeration. They agree to float precision, at π₀ and at the
# trained policy — and so do the gradients, against `jax.grad` of the
# enumerated ELBO.

# %%
exact_elbo = jax.jit(estimators.elbo(target, handlers.enumerate(policy)).value_and_grad)


def enumerated_elbo(params):
    log_q = log_policy_all(params)
    return jnp.sum(jnp.exp(log_q) * (log_joint - log_q))


for label, params in [("π₀", params0), ("ELBO-trained", trained["(b) ELBO = KL-reg. RL"])]:
    value, grads = exact_elbo(params, jax.random.PRNGKey(0))
    identity = LOG_Z - policy_metrics(params)["KL(π‖p*)"]
    reference = jax.grad(enumerated_elbo)(params)
    grad_error = max(float(jnp.max(jnp.abs(grads[k] - reference[k]))) for k in grads)
    print(f"{label:13s} stackvi exact ELBO {float(value):.6f}   log Z − KL(π‖p*) "
          f"{float(identity):.6f}   max gradient difference {grad_error:.1e}")
    assert abs(float(value - identity)) < 1e-4 * (1 + abs(float(identity)))
    assert grad_error < 1e-4

# %% [markdown]
# **The ELBO is J/β.** The RL-form program (reward − β·KL to π₀ at the sample)
# and the ELBO, run with the same key at the trained policy (where log π ≠
# log π₀), draw the same sequences: the values differ by the factor β, and so
# do the gradient estimates, leave-one-out baselines included. Adam is
# invariant to the scale of the gradient, so the two train the same policy
# (up to Adam's ε).

# %%
p = trained["(b) ELBO = KL-reg. RL"]
key = jax.random.PRNGKey(7)
v_rl, g_rl = jax.jit(kl_regularized_reward(loo_policy, K, BETA).value_and_grad)(p, key)
v_elbo, g_elbo = jax.jit(objectives["(b) ELBO = KL-reg. RL"].value_and_grad)(p, key)
print(f"J estimate {float(v_rl):.5f} = β · ELBO estimate {float(BETA * v_elbo):.5f}")
assert abs(float(v_rl - BETA * v_elbo)) < 1e-4 * (1 + abs(float(v_rl)))
for k in g_rl:
    assert jnp.allclose(g_rl[k], BETA * g_elbo[k], rtol=1e-3, atol=1e-5), k

# %% [markdown]
# ## Results
#
# The exact metrics of every fine-tuned policy, with π₀, p* and the two
# projections (the best first-order policy under each divergence) as
# references.

# %%
references = {
    "π₀ (pretrained)": policy_metrics(params0),
    "p* (target)": exact_metrics(log_pstar),
    "reverse-KL optimum from π₀": policy_metrics(reverse_from_pi0),
    "reverse-KL optimum (best)": policy_metrics(reverse_best),
    "forward-KL optimum": policy_metrics(forward_projection),
}
rows = {**references, **{name: {m: v[-1] for m, v in h.items()} for name, h in histories.items()}}
table = {name: {m: float(v) for m, v in row.items()} for name, row in rows.items()}
try:
    import pandas as pd

    print(pd.DataFrame(table).T.round(3).to_string())
except ImportError:  # pandas is optional
    print(f"{'':28s}" + "".join(f"{m:>10s}" for m in table["p* (target)"]))
    for name, row in table.items():
        print(f"{name:28s}" + "".join(f"{v:10.3f}" for v in row.values()))

# %%
COLORS = {name: f"C{i}" for i, name in enumerate(objectives)}
fig, axes = plt.subplots(1, 4, figsize=(15, 4))
steps = np.arange(0, STEPS + 1, EVERY)
for ax, metric in zip(axes, table["p* (target)"], strict=True):
    for name, h in histories.items():
        ax.plot(steps, h[metric], color=COLORS[name], label=name)
    if metric in ("E_π[r]", "H(π)"):
        ax.axhline(table["p* (target)"][metric], color="k", ls="--", lw=1, label="p*")
    else:
        for ref, ls in [("reverse-KL optimum from π₀", "-."), ("reverse-KL optimum (best)", ":"),
                        ("forward-KL optimum", "--")]:
            ax.axhline(table[ref][metric], color="gray", ls=ls, lw=1, label=ref)
        ax.set_yscale("log")
    ax.set_title(metric)
    ax.set_xlabel("step")
handles, labels = axes[0].get_legend_handles_labels()  # methods and the two optima
h, lab = axes[2].get_legend_handles_labels()  # ... and p*
fig.legend(handles + h[-1:], labels + lab[-1:], loc="lower center", ncol=8, fontsize=8)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.savefig(os.path.join(FIGDIR, "07_kl_finetuning_training.png"), dpi=100)

# %% [markdown]
# Where the probability mass goes: the distribution of the reward under each
# policy, against p* and π₀.

# %%
levels = np.arange(int(R.max()) + 1)


def reward_histogram(log_q):
    return np.asarray(jnp.zeros(levels.size).at[R.astype(int)].add(jnp.exp(log_q)))


dists = {"π₀": log_pi0, "p*": log_pstar,
         **{name: log_policy_all(params) for name, params in trained.items()}}
colors = {"π₀": "silver", "p*": "k", **COLORS}
fig, ax = plt.subplots(figsize=(9, 3.6))
width = 0.8 / len(dists)
for i, (name, log_q) in enumerate(dists.items()):
    ax.bar(levels + (i - len(dists) / 2 + 0.5) * width, reward_histogram(log_q), width,
           color=colors[name], label=name)
ax.set_xlabel("reward r(x)")
ax.set_ylabel("probability")
ax.legend(fontsize=7)
fig.tight_layout()
plt.savefig(os.path.join(FIGDIR, "07_kl_finetuning_rewards.png"), dpi=100)

for name, params in trained.items():
    log_q = log_policy_all(params)
    top = int(jnp.argmax(log_q))
    print(f"{name:24s} most likely: {''.join(TOKENS[i] for i in X[top])} "
          f"(p = {float(jnp.exp(log_q[top])):.3f}); first token {first_token(params)}")

# %% [markdown]
# What the results show:
#
# * **REINFORCE on the reward collapses.** Its policy puts almost all its
#   mass on one sequence (`ADDDDA`: four keywords and a rhyme — not even the
#   best sequence `DDDDDD`, since gradient ascent on E_π[r] stops at the first
#   corner of the simplex it reaches). The entropy goes to zero, and
#   KL(p*‖π) grows far *above* π₀'s: the fine-tuned model can no longer say
#   most of what p* (or π₀) would. Nothing in E_π[r] asks it to.
# * **The ELBO (KL-regularized RL)** lowers KL(π‖p*) from π₀'s 2.9 to the
#   reverse-KL optimum reachable from π₀ (1.31): it converges to a
#   *distribution*, not a point mass. Being reverse KL it is mode-seeking:
#   it commits to the opening `A` (the local optimum nearest π₀, not the
#   global one, which opens with `D`), its entropy is below p*'s and its
#   KL(p*‖π) stays large.
# * **IWAE and RWS** cover p*'s mass instead: their KL(p*‖π) is about a third
#   of the ELBO's — IWAE's close to the forward-KL optimum (1.03), RWS's a
#   little above it (its self-normalized weights from K = 16 policy samples
#   are biased toward the policy) — at the price of a larger KL(π‖p*). They
#   keep all four openings, most on `D`.
# * No first-order policy reaches p*'s expected reward (4.45): p* earns much
#   of it from rhymes, which need the first and the last token to be
#   correlated. The distribution-matching objectives end between 3 and 3.7,
#   as do the two divergences' optima.
#
# The three distribution-matching objectives differ in *which* divergence to
# p* they trade off; the RL objective has no divergence to p* at all.

# %%
final = {name: {m: v[-1] for m, v in h.items()} for name, h in histories.items()}
a, b = final["(a) REINFORCE, E[r]"], final["(b) ELBO = KL-reg. RL"]
start = table["π₀ (pretrained)"]
assert b["KL(π‖p*)"] < 0.6 * start["KL(π‖p*)"]           # the ELBO moves toward p*
assert a["H(π)"] < 0.5 * b["H(π)"]                        # REINFORCE collapses...
assert a["KL(p*‖π)"] > 2 * start["KL(p*‖π)"]              # ...and loses p*'s support
assert a["E_π[r]"] > max(b["E_π[r]"], table["p* (target)"]["E_π[r]"])
for name in ["(c) IWAE (VIMCO)", "(c) RWS (wake-q)"]:     # mass-covering vs mode-seeking
    assert final[name]["KL(p*‖π)"] < 0.75 * b["KL(p*‖π)"], name
    assert final[name]["KL(π‖p*)"] < start["KL(π‖p*)"], name
