"""Small models shared by the scale-out check scripts."""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        w = numpyro.sample("w", dist.Normal(z, 1.0))
        numpyro.sample("x", dist.Normal(w, 0.5), obs=x)


def guide(x):
    mz = numpyro.param("mz", 0.1)
    numpyro.sample("z", dist.Normal(mz, 1.0))
    loc = numpyro.param("loc", jnp.zeros(x.shape[0]))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("w", dist.Normal(loc, 0.7))


def discrete_model(x):
    with numpyro.plate("data", x.shape[0]):
        b = numpyro.sample("b", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)


def discrete_guide(x):
    logits = numpyro.param("logits", jnp.zeros(x.shape[0]))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("b", dist.Bernoulli(logits=logits))
