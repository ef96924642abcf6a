"""``disarm``: DisARM gradients for Bernoulli sites (Dong, Mnih & Tucker, 2020).

For ``b ~ Bernoulli(σ(α))`` drawn as ``b = 1[u < σ(α)]``, the antithetic
``b̃ = 1[1 − u < σ(α)]`` has the same law, and

    ∇_α E[f(b)] = E[ ½ (f(b) − f(b̃)) · (−1)^b̃ · 1[b ≠ b̃] · σ(|α|) ]

an unbiased estimator that is exactly zero whenever the pair agrees, with far
lower variance than REINFORCE. A claimed site is evaluated at both values in
one pass (the pair along a branch axis, :mod:`stackvi.gradients.branches`);
the objective's value uses ``b``.

``arm`` (Yin & Zhou, 2019), DisARM's predecessor, uses the same pair with the
weight ``½ − u`` instead (``∇_α E[f(b)] = E[(f(b) − f(b̃))(½ − u)]``, with
``1[u > σ(−α)] = b̃``): also unbiased, and DisARM is its conditional
expectation given the pair, so ARM's variance is never lower. It is here for
comparison (and because the literature benchmarks against it).

This file is the worked example of ``docs/strategies.md``: a strategy written
on the public extension API (:mod:`stackvi.gradients`) only.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("b", dist.Bernoulli(0.5))
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", 0.4)))
>>> obj = estimators.elbo(model, disarm(guide))
>>> _, grads = jax.jit(obj.value_and_grad)({"a": jnp.array(0.4)}, jax.random.PRNGKey(0))
>>> sorted(grads)
['a']
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
from jax import random

from stackvi.gradients import (
    SiteRecord,
    Strategy,
    allocate_dim,
    bernoulli_base,
    branch_costs,
    branch_difference,
    check_plated,
    contract,
    lay_out,
    register,
    require_family,
    select,
    site_term,
    upstream_weights,
)
from stackvi.terms import site_log_prob

__all__ = ["disarm", "arm"]

sg = jax.lax.stop_gradient


@register
class disarm(Strategy):
    """DisARM for the claimed Bernoulli sites (see the module docstring)."""

    name = "disarm"
    owns_value = True
    detach_own_term = True  # E[∇ log q(b)] = 0: its own log q enters the value detached

    @classmethod
    def validate(cls, msg, claimer):
        require_family(bernoulli_base(msg["fn"]), msg, claimer, cls.name, "Bernoulli")

    @staticmethod
    def pair_weight(u, p, b, anti, logits):
        """The weight of ``f(b) − f(b̃)`` (no gradient): ``½ (−1)^b̃ 1[b ≠ b̃] σ(|α|)``."""
        return 0.5 * jnp.where(anti == 1, -1.0, 1.0) * (b != anti) * jax.nn.sigmoid(
            jnp.abs(logits))

    @classmethod
    def prepare(cls, msg):
        if msg["value"] is not None:
            return
        got = allocate_dim(msg, cls.name)
        if got is None:
            return
        dim, axis = got
        check_plated(msg, cls.name)
        fn = msg["fn"]
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        base = bernoulli_base(fn)
        logits = jnp.broadcast_to(base.logits, shape)
        u = random.uniform(numpyro.prng_key(), shape)
        p = jax.nn.sigmoid(sg(logits))
        b, anti = (u < p).astype(jnp.result_type(float)), (1 - u < p).astype(jnp.result_type(float))
        coord, _ = lay_out(msg, b, anti[None], dim, axis)
        weight = cls.pair_weight(u, p, b, anti, sg(logits))
        extra = (site_term(msg, logits, coord, "logits"), site_term(msg, weight, coord, "weight"))
        msg["infer"]["_stackvi_disarm"] = (extra, coord)

    @classmethod
    def transform(cls, msg):
        if "_stackvi_disarm" not in msg["infer"]:
            raise ValueError(
                f"site '{msg['name']}' is claimed by {cls.name} outside an objective: its pair of "
                "values needs the dims an objective hands out (run it through estimators.elbo)."
            )
        msg["intermediates"] = []

    @classmethod
    def record(cls, msg):
        extra, coord = msg["infer"]["_stackvi_disarm"]
        return SiteRecord(msg["name"], site_log_prob({**msg, "scale": None}), cls.name,
                          axis=msg["infer"]["_stackvi_axis"], extra=extra, static=coord)

    @classmethod
    def gradient(cls, record, ctx):
        """``(α − sg α) · sg(weight · (f(b) − f(b̃)))``, per element, contracted exactly."""
        coord = record.static
        logits = select(record.extra[0].array, record.extra[0].names, ctx.branches)
        weight = select(record.extra[1].array, record.extra[1].names, ctx.branches)
        own = [n for n in logits[1] if n != coord and n not in ctx.weights]
        costs = branch_costs(ctx.value, record, ctx.raw_weights, ctx.branches)
        up = upstream_weights(ctx.raw_weights, record, ctx.branches)
        acc = jnp.zeros(())
        # plus=-1 (b), minus=0 (b̃): f(b) − f(b̃)
        for diff, names, label in branch_difference(costs, record, -1, 0, 1, coord, own):
            acc = acc + contract([(logits[0] - sg(logits[0]), logits[1]),
                                  (sg(weight[0]), weight[1]), (sg(diff), names)], up, label)
        return acc


@register
class arm(disarm):
    """ARM (Yin & Zhou, 2019) for the claimed Bernoulli sites: DisARM's pair, weight ``½ − u``."""

    name = "arm"

    @staticmethod
    def pair_weight(u, p, b, anti, logits):
        # ARM: ∇_α E f(b) = E[(f(1[u > σ(−α)]) − f(1[u < σ(α)])) (u − ½)], and
        # 1[u > σ(−α)] = 1[1 − u < σ(α)] = b̃, 1[u < σ(α)] = b.
        return 0.5 - u
