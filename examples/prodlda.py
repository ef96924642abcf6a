"""ProdLDA topic model with Flax networks (BatchNorm, dropout) and a subsampled plate.

Shows: NumPyro's ``prodlda`` example — encoder and decoder are ``flax.linen``
modules registered with ``numpyro.contrib.module.flax_module`` (dropout keys
from ``numpyro.prng_key()``, BatchNorm statistics as ``mutable`` state); the
documents plate is subsampled (``subsample_size``) and the batch picked with
``numpyro.subsample``; per-document topic proportions are Dirichlet (pathwise
through implicit reparameterization).

Data: synthetic word counts the shape of a small corpus (400 documents, a
vocabulary of 300 words, 5 topics), drawn from an LDA-like process.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import flax_module


class FlaxEncoder(nn.Module):
    vocab_size: int
    num_topics: int
    hidden: int
    dropout_rate: float

    @nn.compact
    def __call__(self, inputs, is_training):
        h = nn.softplus(nn.Dense(self.hidden)(inputs))
        h = nn.softplus(nn.Dense(self.hidden)(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not is_training)(h)
        h = nn.Dense(self.num_topics)(h)
        log_concentration = nn.BatchNorm(use_bias=False, use_scale=False, momentum=0.9,
                                         use_running_average=not is_training)(h)
        return jnp.exp(log_concentration)


class FlaxDecoder(nn.Module):
    vocab_size: int
    dropout_rate: float

    @nn.compact
    def __call__(self, inputs, is_training):
        h = nn.Dropout(self.dropout_rate, deterministic=not is_training)(inputs)
        h = nn.Dense(self.vocab_size, use_bias=False)(h)
        return nn.BatchNorm(use_bias=False, use_scale=False, momentum=0.9,
                            use_running_average=not is_training)(h)


def model(docs, hyperparams, is_training=False):
    decoder = flax_module(
        "decoder", FlaxDecoder(hyperparams["vocab_size"], hyperparams["dropout_rate"]),
        input_shape=(1, hyperparams["num_topics"]), apply_rng=["dropout"],
        mutable=["batch_stats"], is_training=True)
    with numpyro.plate("documents", docs.shape[0], subsample_size=hyperparams["batch_size"]):
        batch_docs = numpyro.subsample(docs, event_dim=1)
        theta = numpyro.sample("theta", dist.Dirichlet(jnp.ones(hyperparams["num_topics"])))
        logits = decoder(theta, is_training, rngs={"dropout": numpyro.prng_key()})
        total_count = batch_docs.sum(-1)
        numpyro.sample("obs", dist.Multinomial(total_count, logits=logits), obs=batch_docs)


def guide(docs, hyperparams, is_training=False):
    encoder = flax_module(
        "encoder",
        FlaxEncoder(hyperparams["vocab_size"], hyperparams["num_topics"], hyperparams["hidden"],
                    hyperparams["dropout_rate"]),
        input_shape=(1, hyperparams["vocab_size"]), apply_rng=["dropout"],
        mutable=["batch_stats"], is_training=True)
    with numpyro.plate("documents", docs.shape[0], subsample_size=hyperparams["batch_size"]):
        batch_docs = numpyro.subsample(docs, event_dim=1)
        concentration = encoder(batch_docs, is_training, rngs={"dropout": numpyro.prng_key()})
        numpyro.sample("theta", dist.Dirichlet(concentration))


def data(num_docs=400, vocab_size=300, num_topics=5):
    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(vocab_size, 0.05), size=num_topics)
    props = rng.dirichlet(np.full(num_topics, 0.3), size=num_docs)
    lengths = rng.integers(40, 120, size=num_docs)
    docs = np.stack([rng.multinomial(n, p @ topics) for n, p in zip(lengths, props,
                                                                     strict=True)])
    hyperparams = dict(vocab_size=vocab_size, num_topics=num_topics, hidden=50,
                       dropout_rate=0.2, batch_size=32)
    return (jnp.asarray(docs, jnp.float32), hyperparams), {"is_training": True}


__all__ = ["model", "guide", "data", "FlaxEncoder", "FlaxDecoder"]
