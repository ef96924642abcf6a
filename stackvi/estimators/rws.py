"""Reweighted wake-sleep (Bornschein & Bengio, 2015; Le et al., 2019).

Model and guide are trained on different objectives, from K self-normalized
proposals (weights ``w̄ₖ ∝ p(x, zₖ)/q(zₖ)``, samples detached, so any guide
site — discrete included — works):

* **wake-p** (model params θ): ``Σₖ w̄ₖ ∇_θ log p_θ(x, zₖ)``, an estimate of
  ``∇_θ log p_θ(x)`` (exactly the θ-gradient of ``E[IWAE_K]``);
* **wake-q** (guide params φ): ``Σₖ w̄ₖ ∇_φ log q_φ(zₖ)``, an estimate of
  ``−∇_φ KL(p(z|x) ‖ q_φ)`` (biased for finite K, consistent as K grows);
* **sleep-q** (guide params φ, opt-in): ``∇_φ log q_φ(z | x)`` at a *dream*
  ``(z, x) ~ p_θ``, an unbiased estimate of ``−∇_φ E_{p(x)} KL(p(z|x) ‖ q_φ)``.
  Dreamed observations reach the guide through ``sleep_args(dream)`` →
  ``(args, kwargs)``, ``dream`` being a dict of the dreamed observed sites.

**Per data point by default**, as :func:`~stackvi.estimators.iwae.iwae`: when
every log-density term lies in some plates (the data plates), the weights are
normalized per element ``n`` of those plates, ``w̄ₖₙ ∝ p(xₙ, zₖₙ)/q(zₖₙ)``,
and the wake directions are ``Σₙ Σₖ w̄ₖₙ ∇ log p(xₙ, zₖₙ)`` and
``Σₙ Σₖ w̄ₖₙ ∇ log q(zₖₙ)``. ``per_datapoint=False`` normalizes over whole-batch
weights ``Πₙ wₖₙ`` (Pyro's ``ReweightedWakeSleep``): on a minibatch of B data
points the largest of K such products takes nearly all the weight, so each
point's "posterior sample" is little better than a draw from q and wake-q
learns almost nothing (AIR with K = 10 and B = 64 never learned to count).
A subsampled data plate is unscaled inside the weights and scaled outside.

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
from stackvi.estimators.iwae import check_num_particles, check_per_datapoint, per_point_terms
from stackvi.gradients.scoring import model_density
from stackvi.handlers.density import trace_terms
from stackvi.handlers.stop import stop_samples
from stackvi.terms import Terms

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


def _proposal_terms(model: Callable, guide: Callable) -> Callable:
    """``(*args) -> Terms``: ``log p(x, z)`` (labels ``p:``) and ``log q(z)`` (labels ``q:``)
    at one detached guide sample ``z``."""

    def run(*args, **kwargs):
        with stop_samples():
            guide_trace = trace(guide).get_trace(*args, **kwargs)
        return (model_density(model, guide_trace, *args, **kwargs)
                + trace_terms(guide_trace, prefix="q:"))

    return run


def _part(terms: Terms, prefix: str) -> Terms:
    return Terms(tuple(t for t in terms.terms if t.label.startswith(prefix)))


def rws(model: Callable, guide: Callable, num_particles: int = 5, *, wake_q: bool = True,
        sleep_q: bool = False, sleep_args: SleepArgs | None = None,
        num_sleep: int | None = None, per_datapoint: bool = True) -> Objective:
    """Reweighted wake-sleep with K = ``num_particles`` proposals (see the module docstring).

    ``wake_q`` / ``sleep_q`` choose the guide's update (either or both);
    ``sleep_q`` needs ``sleep_args`` and averages over ``num_sleep`` dreams
    (default K). ``per_datapoint``: weights normalized per element of the data
    plates (default) or over the whole batch.
    """
    check_num_particles("rws", num_particles)
    check_per_datapoint("rws", per_datapoint)
    if sleep_q and sleep_args is None:
        raise ValueError(
            "rws(sleep_q=True) needs sleep_args: a function from the dreamed observed sites "
            "(a dict) to the guide's (args, kwargs), e.g. lambda d: ((d['x'],), {})."
        )
    num_sleep = num_particles if num_sleep is None else num_sleep
    check_num_particles("rws", num_sleep, "num_sleep")
    sg = jax.lax.stop_gradient

    def program(*args, **kwargs):
        terms, names, scale = per_point_terms(_proposal_terms(model, guide), num_particles,
                                              per_datapoint)(*args, **kwargs)
        # Per element: unscaled inside the weights, the subsampling scale outside.
        log_p = _part(terms, "p:").per(names) / scale    # (K, *plate sizes)
        log_q = _part(terms, "q:").per(names) / scale
        log_w = sg(log_p - log_q)
        w = jax.nn.softmax(log_w, axis=0)
        log_evidence = scale * jnp.sum(jax.nn.logsumexp(log_w, axis=0) - jnp.log(num_particles))
        wake = scale * (jnp.sum(w * log_p) + (jnp.sum(w * log_q) if wake_q else 0.0))
        if sleep_q:
            log_q = particles(lambda: _sleep_log_q(model, guide, sleep_args, args, kwargs),
                              num_sleep, axis="dreams")()
            wake = wake + jnp.mean(log_q)
        # Value: the IWAE estimate; gradient: the wake/sleep ascent directions.
        return log_evidence + (wake - sg(wake))

    info = {"num_particles": num_particles, "wake_q": wake_q, "sleep_q": sleep_q,
            "per_datapoint": per_datapoint}
    return Objective(program, model, guide, name="rws", info=info)
