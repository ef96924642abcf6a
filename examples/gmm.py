"""Gaussian mixture on the iris measurements, assignments summed out (``config_enumerate``).

Shows: a discrete mixture written as in NumPyro's enumeration examples — the
per-point assignment is a model site marked ``config_enumerate`` that no
guide samples, so it is summed out exactly (stackvi: model-side enumeration;
NumPyro: ``TraceEnum_ELBO``); component parameters are picked with
``Vindex``; the guide is ``AutoDelta`` over the global sites (MAP), so the
ELBO equals the log joint ``log p(x, θ)`` exactly, which
:func:`log_joint` computes by ``logsumexp`` for the tests.

:func:`local_guide` is the alternative the strategy comparison uses: it also
samples every assignment from free per-point logits, so a gradient strategy
(``enumerate``, ``mvd``, ``reinforce``) can be chosen for ``z``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer.autoguide import AutoDelta
from numpyro.ops.indexing import Vindex

K = 3  # components


@config_enumerate
def model(x, num_components=K):
    n, d = x.shape
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.full(num_components, 2.0)))
    with numpyro.plate("components", num_components):
        locs = numpyro.sample("locs", dist.Normal(0.0, 2.0).expand([d]).to_event(1))
        scales = numpyro.sample("scales", dist.LogNormal(-1.0, 1.0).expand([d]).to_event(1))
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Categorical(weights))
        numpyro.sample("x", dist.Normal(Vindex(locs)[z, :], Vindex(scales)[z, :]).to_event(1),
                       obs=x)


def _init_locs(x, num_components=K):
    # k-means++-like deterministic start: spread the initial locs over the data
    idx = jnp.linspace(0, x.shape[0] - 1, num_components).astype(int)
    return jnp.sort(x, axis=0)[idx]


guide = AutoDelta(numpyro.handlers.block(model, hide=["z"]),
                  init_loc_fn=numpyro.infer.init_to_sample)


def local_guide(x, num_components=K):
    """Point masses on the globals and a free Categorical per assignment."""
    n, d = x.shape
    w = numpyro.param("weights_loc", jnp.full(num_components, 1.0 / num_components),
                      constraint=dist.constraints.simplex)
    loc = numpyro.param("locs_loc", _init_locs(x, num_components))
    scale = numpyro.param("scales_loc", jnp.ones((num_components, d)),
                          constraint=dist.constraints.positive)
    numpyro.sample("weights", dist.Delta(w, event_dim=1))
    with numpyro.plate("components", num_components):
        numpyro.sample("locs", dist.Delta(loc, event_dim=1))
        numpyro.sample("scales", dist.Delta(scale, event_dim=1))
    logits = numpyro.param("z_logits", jnp.zeros((n, num_components)))
    with numpyro.plate("data", n):
        numpyro.sample("z", dist.Categorical(logits=logits))


def log_joint(x, weights, locs, scales):
    """``log p(x, θ)`` with the assignments summed out by ``logsumexp`` (exact)."""
    lp = (dist.Dirichlet(jnp.full(weights.shape[-1], 2.0)).log_prob(weights)
          + dist.Normal(0.0, 2.0).log_prob(locs).sum()
          + dist.LogNormal(-1.0, 1.0).log_prob(scales).sum())
    comp = dist.Normal(locs, scales).log_prob(x[:, None, :]).sum(-1)  # (n, K)
    return lp + jax.nn.logsumexp(jnp.log(weights) + comp, axis=-1).sum()


def data():
    """Iris (scikit-learn), 4 standardized measurements of 150 flowers."""
    from sklearn.datasets import load_iris

    x = load_iris().data
    x = (x - x.mean(0)) / x.std(0)
    return (jnp.asarray(x, jnp.float32),), {}


__all__ = ["model", "guide", "local_guide", "log_joint", "data"]
