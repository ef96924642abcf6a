"""Reweighted wake-sleep (Bornschein & Bengio, 2015; Le et al., 2019).

Model and guide are trained on different objectives, from K self-normalized
proposals (:func:`stackvi.marginal.normalize`, weights ``w̄ₖ ∝ p(x, zₖ)/q(zₖ)``,
samples detached, so any guide site — discrete included — works):

* **wake-p** (model params θ): ``Σₖ w̄ₖ ∇_θ log p_θ(x, zₖ)``, an estimate of
  ``∇_θ log p_θ(x)`` (exactly the θ-gradient of ``E[IWAE_K]``);
* **wake-q** (guide params φ): ``Σₖ w̄ₖ ∇_φ log q_φ(zₖ)``, an estimate of
  ``−∇_φ KL(p(z|x) ‖ q_φ)`` (biased for finite K, consistent as K grows);
* **sleep-q** (guide params φ, opt-in): ``∇_φ log q_φ(z | x)`` at a *dream*
  ``(z, x) ~ p_θ``, an unbiased estimate of ``−∇_φ E_{p(x)} KL(p(z|x) ‖ q_φ)``.
  Dreamed observations reach the guide through ``sleep_args(dream)`` →
  ``(args, kwargs)``, ``dream`` being a dict of the dreamed observed sites.

**Sign convention.** Like every objective here, ``value_and_grad`` returns
*ascent* directions: for θ the direction that increases ``log p_θ(x)``, for φ
the direction that decreases the KL it targets. The value is the IWAE
estimate ``log 1/K Σ wₖ`` (a lower bound on ``log p(x)``, for monitoring). So
``fit`` (which ascends) trains both with one optimizer. A param shared by model
and guide gets the sum of both directions.

>>> import jax, numpyro, numpyro.distributions as dist
>>> def model():
...     b = numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("theta", 0.0)))
...     numpyro.sample("x", dist.Normal(b, 1.0), obs=1.0)
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("eta", 0.0)))
>>> obj = rws(model, guide, num_particles=5)
>>> _, grads = jax.jit(obj.value_and_grad)(obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> sorted(grads)
['eta', 'theta']
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.handlers import substitute, trace
from numpyro.primitives import Messenger

from stackvi.estimators.core import Objective, particles
from stackvi.estimators.iwae import check_num_particles
from stackvi.handlers.density import trace_terms
from stackvi.handlers.stop import stop_samples
from stackvi.marginal import normalize

__all__ = ["rws"]

SleepArgs = Callable[[dict], tuple[tuple, dict]]


class _dream(Messenger):
    """Sample the observed sites instead of conditioning on them (the sleep phase)."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["is_observed"] = False
            msg["value"] = None
            msg["infer"] = {**msg["infer"], "_stackvi_dreamed": True}


def _sleep_log_q(model: Callable, guide: Callable, sleep_args: SleepArgs, args, kwargs):
    # The dream must not depend on θ (sleep trains the guide only).
    with stop_samples():
        dream_trace = trace(_dream(model)).get_trace(*args, **kwargs)
    dreamed = {n: s["value"] for n, s in dream_trace.items()
               if s["type"] == "sample" and s["infer"].get("_stackvi_dreamed")}
    latent = {n: s["value"] for n, s in dream_trace.items()
              if s["type"] == "sample" and not s["infer"].get("_stackvi_dreamed")}
    gargs, gkwargs = sleep_args(dreamed)
    guide_trace = trace(substitute(guide, data=latent)).get_trace(*gargs, **gkwargs)
    return trace_terms(guide_trace).total()


def rws(model: Callable, guide: Callable, num_particles: int = 5, *, wake_q: bool = True,
        sleep_q: bool = False, sleep_args: SleepArgs | None = None,
        num_sleep: int | None = None) -> Objective:
    """Reweighted wake-sleep with K = ``num_particles`` proposals (see the module docstring).

    ``wake_q`` / ``sleep_q`` choose the guide's update (either or both);
    ``sleep_q`` needs ``sleep_args`` and averages over ``num_sleep`` dreams
    (default K).
    """
    check_num_particles("rws", num_particles)
    if sleep_q and sleep_args is None:
        raise ValueError(
            "rws(sleep_q=True) needs sleep_args: a function from the dreamed observed sites "
            "(a dict) to the guide's (args, kwargs), e.g. lambda d: ((d['x'],), {})."
        )
    num_sleep = num_particles if num_sleep is None else num_sleep
    check_num_particles("rws", num_sleep, "num_sleep")
    sg = jax.lax.stop_gradient

    def program(*args, **kwargs):
        post = normalize(model, guide, num_particles)(*args, **kwargs)
        w = post.weights
        wake = jnp.sum(w * post.log_p) + (jnp.sum(w * post.log_q) if wake_q else 0.0)
        if sleep_q:
            log_q = particles(lambda: _sleep_log_q(model, guide, sleep_args, args, kwargs),
                              num_sleep, axis="dreams")()
            wake = wake + jnp.mean(log_q)
        # Value: the IWAE estimate; gradient: the wake/sleep ascent directions.
        return sg(post.log_evidence) + (wake - sg(wake))

    info = {"num_particles": num_particles, "wake_q": wake_q, "sleep_q": sleep_q}
    return Objective(program, model, guide, name="rws", info=info)
