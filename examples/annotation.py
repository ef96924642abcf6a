"""Dawid–Skene model of crowd-sourced annotations, true classes summed out.

Shows: the annotation model of NumPyro's ``annotation`` example (Paun et al.
2018, Fig. 2): per-annotator confusion matrices ``beta``, a class prior
``pi``, and a latent true class per item marked ``infer={"enumerate":
"parallel"}`` and summed out. As in NumPyro's example the model does Python
arithmetic on the data (``int(np.max(positions)) + 1`` annotators), and
picks each annotator's row with ``Vindex(beta)[positions, c, :]``. The guide
is ``AutoNormal`` over the continuous sites.

Data: synthetic, the shape of Dawid & Skene's Table 1 (45 items, 7 annotation
slots by 5 annotators — the first one three times —, 4 classes), drawn from
the model with a fixed seed.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import block
from numpyro.infer.autoguide import AutoNormal
from numpyro.ops.indexing import Vindex


def model(positions, annotations):
    num_annotators = int(np.max(positions)) + 1
    num_classes = int(np.max(annotations)) + 1
    num_items, num_positions = annotations.shape

    with numpyro.plate("annotator", num_annotators, dim=-2):
        with numpyro.plate("class", num_classes):
            beta = numpyro.sample("beta", dist.Dirichlet(jnp.ones(num_classes)))

    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(num_classes)))

    with numpyro.plate("item", num_items, dim=-2):
        c = numpyro.sample("c", dist.Categorical(pi), infer={"enumerate": "parallel"})
        with numpyro.plate("position", num_positions):
            numpyro.sample("y", dist.Categorical(Vindex(beta)[positions, c, :]),
                           obs=annotations)


guide = AutoNormal(block(model, hide=["c"]))


def data():
    """Positions (which annotator filled each slot) and annotations, as NumPy arrays."""
    rng = np.random.default_rng(0)
    positions = np.array([0, 0, 0, 1, 2, 3, 4])
    num_items, num_classes = 45, 4
    # annotators are right ~75% of the time, otherwise pick a neighbouring class
    confusion = np.full((5, num_classes, num_classes), 0.05)
    for a in range(5):
        confusion[a] += np.eye(num_classes) * (0.6 + 0.05 * a)
    confusion /= confusion.sum(-1, keepdims=True)
    truth = rng.choice(num_classes, size=num_items, p=[0.35, 0.35, 0.2, 0.1])
    annotations = np.stack([
        [rng.choice(num_classes, p=confusion[a, c]) for a in positions] for c in truth])
    return (positions, annotations), {}


__all__ = ["model", "guide", "data"]
