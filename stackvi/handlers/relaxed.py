"""``gumbel_softmax`` and ``straight_through``: *biased* relaxation gradients for Bernoulli sites.

For ``b ~ Bernoulli(σ(α))`` drawn as ``b = 1[α + L > 0]`` with logistic noise
``L = log u − log(1 − u)``, the binary Concrete / Gumbel-softmax relaxation
(Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017) at temperature ``τ`` is
``y = σ((α + L) / τ)``, a differentiable function of ``α``:

* ``gumbel_softmax``: the site's value *is* ``y``; every cost downstream (the
  model's and the guide's log-densities included, each evaluated by its own
  distribution at the relaxed value) sees ``y`` and the gradient flows
  through it. Both the objective's value and its gradient are those of the
  relaxed program, not the discrete one.
* ``straight_through``: the value is the hard ``b`` (so the objective's
  *value* stays an unbiased estimate) and the gradient flows as if it were
  ``y``: ``b + (y − sg(y))``.

Neither gradient is unbiased for the discrete objective (the bias depends on
``τ`` and on how nonlinear the costs are in ``b``; measured on a test model in
``docs/strategies.md``), so **a claim is refused unless ``biased=True`` is
passed explicitly**. The model must use the site's value arithmetically
(``b * w``, ``Normal(b + …)``): an index (``mu[b]``) cannot carry a relaxed value.
Categorical sites are not covered: NumPyro's Categorical value is an integer
index, through which no relaxed gradient can flow.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("b", dist.Bernoulli(0.5))
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", 0.4)))
>>> obj = estimators.elbo(model, straight_through(guide, temperature=0.5, biased=True))
>>> _, grads = jax.jit(obj.value_and_grad)(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> sorted(grads)
['a']
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
from jax import random

from stackvi.gradients import Strategy, bernoulli_base, register, require_family

__all__ = ["gumbel_softmax", "straight_through"]

sg = jax.lax.stop_gradient


@register
class gumbel_softmax(Strategy):
    """The binary Concrete relaxation at temperature ``τ`` (module docstring). Biased."""

    name = "gumbel_softmax"

    def __init__(self, fn=None, sites=None, *, temperature: float = 0.5, biased: bool = False):
        super().__init__(fn, sites, temperature=temperature, biased=biased)

    @classmethod
    def validate(cls, msg, claimer):
        require_family(bernoulli_base(msg["fn"]), msg, claimer, cls.name, "Bernoulli",
                       why=" (a Categorical's value is an integer index, which cannot carry a "
                       "relaxed gradient)", instead="unordered_set, enumerate, mvd or reinforce")
        if msg["infer"].get("biased") is not True:
            raise ValueError(
                f"{claimer}: site '{msg['name']}' is claimed by {cls.name}, whose gradient is "
                "BIASED for the discrete objective (see docs/strategies.md for how much). Pass "
                f"biased=True to accept that ({cls.name}(guide, ..., biased=True), or "
                f"('{cls.name}', {{'biased': True}}) in configure), or use an unbiased strategy "
                "for Bernoulli sites: disarm, enumerate, mvd or reinforce."
            )
        temperature = msg["infer"].get("temperature", 0.5)
        if not temperature > 0:
            raise ValueError(f"{claimer}: site '{msg['name']}': temperature must be > 0, "
                             f"got {temperature!r}")

    @staticmethod
    def prepare(msg):
        if msg["value"] is not None:
            return
        key = numpyro.prng_key()
        if key is None:
            return
        fn = msg["fn"]
        # logistic noise: α + L > 0 with probability σ(α)
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        msg["infer"]["_stackvi_logistic"] = random.logistic(key, shape)

    @staticmethod
    def relax(soft, hard):
        return soft

    @classmethod
    def transform(cls, msg):
        noise = msg["infer"].get("_stackvi_logistic")
        if noise is None:
            raise ValueError(
                f"site '{msg['name']}' is claimed by {cls.name} but has no noise: run it under "
                "an objective (estimators.elbo) or numpyro.handlers.seed."
            )
        logits = jnp.broadcast_to(bernoulli_base(msg["fn"]).logits, noise.shape)
        z = logits + noise
        soft = jax.nn.sigmoid(z / msg["infer"].get("temperature", 0.5))
        hard = (sg(z) > 0).astype(soft.dtype)
        msg["value"] = cls.relax(soft, hard)
        msg["intermediates"] = []


@register
class straight_through(gumbel_softmax):
    """Hard sample in the value, the Concrete relaxation's gradient (module docstring). Biased."""

    name = "straight_through"

    @staticmethod
    def relax(soft, hard):
        return hard + (soft - sg(soft))  # value exactly the hard sample
