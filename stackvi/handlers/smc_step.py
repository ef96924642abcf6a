"""One particle's step inside :mod:`stackvi.handlers.smc`: the pieces the filter composes.

* :class:`lane_seed` — random keys for one particle's step (cheaper than
  NumPyro's ``seed``, which splits at every site);
* :class:`detach` — stop gradients through samples without a reparameterized
  sampler (their gradient is a score-function term);
* :func:`per_step` — one entry of the scan message's ``substitute_stack``
  (outer ``condition``/``substitute``) as a per-step ``condition_fn``;
* :func:`check_carry`, :func:`check_proposal` — clear errors at trace time;
* :func:`trace_back` — one path of the particle system through its ancestors;
* :func:`factor_msg` — the ``log Ẑ`` factor site that ``scan`` re-emits.

Internal to the SMC handler; no public contract beyond it.

>>> import jax.numpy as jnp
>>> carry, ys = trace_back(jax.random.PRNGKey(0), jnp.array([0.0, -jnp.inf]),
...                        jnp.array([5.0, 6.0]), jnp.arange(6.0).reshape(3, 2),
...                        jnp.array([[0, 0], [1, 0], [1, 1]]))
>>> float(carry), ys.tolist()     # particle 0 at the end, then ancestors[2][0] = 1, ...
(5.0, [0.0, 3.0, 4.0])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
from jax import random
from numpyro.handlers import block, trace
from numpyro.primitives import Messenger

from stackvi.terms import site_log_prob

__all__ = ["lane_seed", "detach", "per_step", "latent", "log_prob", "check_carry",
           "check_proposal", "trace_back", "factor_msg"]


class detach(Messenger):
    """Detach samples without a reparameterized sampler (their gradient is a score term)."""

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and not msg["fn"].has_rsample:
            msg["value"] = jax.lax.stop_gradient(msg["value"])


class lane_seed(Messenger):
    """Random keys for one particle's step: the particle's key itself when the step has
    a single random site (``flags["direct"]``), else ``fold_in(key, n)`` for the n-th.

    Cheaper than ``numpyro.handlers.seed`` (which splits at every site): with tiny
    transitions, deriving keys is a large part of a particle filter's cost.
    """

    def __init__(self, key, flags: dict):
        self.key, self.flags, self.count = key, flags, 0
        super().__init__()

    def process_message(self, msg):
        if msg["type"] not in ("sample", "prng_key", "plate", "control_flow"):
            return
        if msg.get("value") is not None or msg["kwargs"].get("rng_key") is not None:
            return
        if msg["type"] == "plate" and msg["args"][1] in (None, msg["args"][0]):
            return  # a plate without subsampling needs no key
        direct = self.flags["direct"]
        msg["kwargs"]["rng_key"] = self.key if direct else random.fold_in(self.key, self.count)
        self.count += 1
        self.flags["keys"] = max(self.flags["keys"], self.count)


def per_step(subs_map, i, length: int, name: str):
    """numpyro's substitute_stack entry -> a per-step ``condition_fn``/``substitute_fn``."""

    def fn(site):
        if site["type"] != "sample":
            return None
        if isinstance(subs_map, dict):
            if site["name"] not in subs_map:
                return None
            value = subs_map[site["name"]]
        else:
            value = subs_map(site)
        if value is None:
            return None
        ndim = len(tuple(site["kwargs"].get("sample_shape", ())) + tuple(site["fn"].shape()))
        if jnp.ndim(value) == ndim + 1:
            if jnp.shape(value)[0] != length:
                raise ValueError(
                    f"{name}: the series given for scan site '{site['name']}' has length "
                    f"{jnp.shape(value)[0]} but the scan has {length} steps."
                )
            return value[i]
        return value

    return fn


def latent(site) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def log_prob(site) -> jax.Array:
    return jnp.sum(site_log_prob(site).array)


def check_carry(site: str, init, out) -> None:
    a_leaves, a_def = jax.tree_util.tree_flatten(init)
    b_leaves, b_def = jax.tree_util.tree_flatten(out)
    if a_def != b_def or any(
            jnp.shape(a) != b.shape for a, b in zip(a_leaves, b_leaves, strict=True)):
        got = [b.shape for b in b_leaves]
        want = [jnp.shape(a) for a in a_leaves]
        raise ValueError(
            f"{site}: the scan transition returns a carry with leaf shapes {got} "
            f"(structure {b_def}) but the initial carry has {want} (structure {a_def}). "
            "smc_marginalize gives every carry leaf a leading particle dimension and "
            "resamples along it, so each leaf must keep the shape of the initial carry "
            "(one particle's state) at every step."
        )


def check_proposal(site: str, qtr: dict, tr: dict) -> None:
    q = {n for n, s in qtr.items() if latent(s)}
    latent_p = {n for n, s in tr.items() if latent(s)}
    extra, missing = sorted(q - set(tr)), sorted(latent_p - q)
    observed = sorted(n for n in q & set(tr) if tr[n]["is_observed"])
    if extra or missing or observed:
        raise ValueError(
            f"{site}: the proposal must sample exactly the transition's latent sites. "
            + (f"Proposal sites not in the transition: {extra}. " if extra else "")
            + (f"Transition latents the proposal does not sample: {missing}. " if missing else "")
            + (f"Proposal samples observed sites: {observed}. " if observed else "")
        )


def trace_back(key, lw, carry, ys, ancestors):
    """One path of the particle system: a final particle by weight, then its ancestry."""
    b = random.categorical(key, jax.lax.stop_gradient(lw))
    final = jax.tree_util.tree_map(lambda v: v[b], carry)

    def back(b, inputs):
        y_t, a_t = inputs
        return a_t[b], jax.tree_util.tree_map(lambda v: v[b], y_t)

    _, path = jax.lax.scan(back, b, (ys, ancestors), reverse=True)
    return final, path


def factor_msg(site: str, log_z: jax.Array) -> dict:
    """A well-formed factor site for numpyro's ``scan`` to send through the stack."""
    with block(), trace() as tr:
        numpyro.factor(site, log_z)
    msg = {k: v for k, v in tr[site].items() if k != "stop"}
    msg["_control_flow_done"] = True  # outer condition/substitute leave it alone
    return msg
