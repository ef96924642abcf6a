"""Hidden Markov model over binary "tone" sequences, hidden states summed out, with ``scan``.

Shows: NumPyro's ``hmm_enum`` model 1 — sequences of different lengths padded
to one array, the time loop written with ``numpyro.contrib.control_flow.scan``,
padding masked with ``handlers.mask``, the hidden state marked
``infer={"enumerate": "parallel"}`` and summed out in linear time (a forward
algorithm inside ``scan``). The guide is ``AutoNormal`` over the transition
and emission probabilities. :func:`log_likelihood` is the log-space forward
algorithm that the tests check the enumerated ELBO against.

Data: synthetic binary sequences the shape of a small polyphonic-music set
(16 sequences, up to 24 steps, 6 tones), sampled from a 3-state HMM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.handlers import block, mask
from numpyro.infer.autoguide import AutoNormal

HIDDEN = 3


def model(sequences, lengths, hidden_dim=HIDDEN, include_prior=True):
    num_sequences, max_length, data_dim = sequences.shape
    with mask(mask=include_prior):
        probs_x = numpyro.sample(
            "probs_x", dist.Dirichlet(0.9 * jnp.eye(hidden_dim) + 0.1).to_event(1))
        probs_y = numpyro.sample(
            "probs_y", dist.Beta(0.1, 0.9).expand([hidden_dim, data_dim]).to_event(2))

    def transition_fn(carry, y):
        x_prev, t = carry
        with numpyro.plate("sequences", num_sequences, dim=-2):
            with mask(mask=(t < lengths)[..., None]):
                x = numpyro.sample("x", dist.Categorical(probs_x[x_prev]),
                                   infer={"enumerate": "parallel"})
                with numpyro.plate("tones", data_dim, dim=-1):
                    numpyro.sample("y", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=y)
        return (x, t + 1), None

    x_init = jnp.zeros((num_sequences, 1), dtype=jnp.int32)
    scan(transition_fn, (x_init, 0), jnp.swapaxes(sequences, 0, 1))


guide = AutoNormal(block(model, hide=["x"]))


def model_prior(probs_x, probs_y):
    """``log p(probs_x) + log p(probs_y)`` (the model's priors)."""
    hidden_dim = probs_x.shape[0]
    return (dist.Dirichlet(0.9 * jnp.eye(hidden_dim) + 0.1).log_prob(probs_x).sum()
            + dist.Beta(0.1, 0.9).log_prob(probs_y).sum())


def log_likelihood(sequences, lengths, probs_x, probs_y):
    """``log p(sequences | probs_x, probs_y)`` by the log-space forward algorithm."""
    y = jnp.swapaxes(sequences, 0, 1)  # (T, S, D)
    log_trans = jnp.log(probs_x)

    def step(carry, inputs):
        alpha, t = carry  # alpha: (S, H) log p(y_<t, x_{t-1})
        y_t = inputs
        emit = dist.Bernoulli(probs_y).log_prob(y_t[:, None, :]).sum(-1)  # (S, H)
        new = jax.nn.logsumexp(alpha[:, :, None] + log_trans[None], axis=1) + emit
        alpha = jnp.where((t < lengths)[:, None], new, alpha)
        return (alpha, t + 1), None

    alpha0 = jnp.where(jnp.arange(probs_x.shape[0]) == 0, 0.0, -jnp.inf)  # x_init = 0
    alpha0 = jnp.broadcast_to(alpha0, (sequences.shape[0], probs_x.shape[0]))
    (alpha, _), _ = jax.lax.scan(step, (alpha0, 0), y)
    return jax.nn.logsumexp(alpha, axis=-1).sum()


def data(num_sequences=16, max_length=24, data_dim=6):
    rng = np.random.default_rng(0)
    trans = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]])
    emit = rng.beta(0.5, 1.5, size=(HIDDEN, data_dim))
    lengths = rng.integers(max_length // 2, max_length + 1, size=num_sequences)
    seqs = np.zeros((num_sequences, max_length, data_dim), np.float32)
    for s in range(num_sequences):
        x = 0
        for t in range(lengths[s]):
            x = rng.choice(HIDDEN, p=trans[x])
            seqs[s, t] = rng.random(data_dim) < emit[x]
    return (jnp.asarray(seqs), jnp.asarray(lengths, jnp.int32)), {}


__all__ = ["model", "guide", "model_prior", "log_likelihood", "data"]
