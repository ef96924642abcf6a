"""``particles``: independent draws, one shared minibatch."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import seed, trace

from stackvi.estimators import particles


def guide(x):
    numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=3) as idx:
        numpyro.deterministic("idx", idx)


def draw(x):
    def one(x):
        tr = trace(guide).get_trace(x)
        return tr["data"]["value"], tr["z"]["value"]

    return particles(one, 5)(x)


def test_particles_share_the_minibatch_but_not_the_samples():
    # IWAE-style bounds take a logsumexp over particles: all of them must score
    # the same minibatch, while their latent draws stay independent.
    idx, z = jax.jit(seed(draw, 0))(jnp.arange(10.0))
    assert idx.shape == (5, 3)
    assert bool(jnp.all(idx == idx[0]))
    assert len(set(map(float, z))) == 5


def test_minibatch_changes_with_the_key():
    x = jnp.arange(100.0)
    batches = {tuple(map(int, seed(draw, k)(x)[0][0])) for k in range(5)}
    assert len(batches) > 1
