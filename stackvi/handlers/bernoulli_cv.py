"""What ``relax`` and ``rebar`` share: Bernoulli sites with a control variate that has params.

Both draw ``b = H(z)`` with ``z = α + logit(u)`` a reparameterized logistic and
``z̃ ~ p(z | b)`` by the conditional reparameterization (:func:`draw`), and both
score ``b`` per coordinate (:func:`bernoulli_log_q`). Both have params (relax's
control variate, rebar's ``η`` and ``λ``) that ``objective.init`` creates only
when a *handler* claims the site, so :class:`ControlVariateStrategy`:

* checks the site is a Bernoulli, naming the site and its distribution, then
  the subclass's options (``check_options``);
* marks the site in ``validate``, which a handler's claim runs before
  ``prepare`` and a claim written in the site's ``infer`` dict does not, so
  ``prepare`` (through :meth:`~ControlVariateStrategy.checked_key`) refuses
  the latter when the subclass needs the params (``needs_handler``);
* turns a param missing from ``params`` into an error naming it
  (:meth:`~ControlVariateStrategy.params_in`), and a site run outside an
  objective into one saying so (:meth:`~ControlVariateStrategy.prepared`).

A subclass states only what differs: ``why_bernoulli``, ``params_are``,
``or_else``, ``whose_params`` and the two hooks.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpyro
from jax import random

from stackvi.gradients import Strategy, bernoulli_base, dist_name, require_family

__all__ = ["ControlVariateStrategy", "draw", "bernoulli_log_q", "coordinate_mask"]

sg = jax.lax.stop_gradient

_WRAPPERS = ("ExpandedDistribution", "MaskedDistribution", "Independent")


def _masks(fn):
    """Every ``.mask(m)`` under ``fn``'s expand/mask/to_event wrappers, as
    ``(m, batch_shape, event_shape)`` of its level."""
    out = []
    while type(fn).__name__ in _WRAPPERS:
        if type(fn).__name__ == "MaskedDistribution":
            out.append((fn._mask, tuple(fn.batch_shape), tuple(fn.event_shape)))
        fn = fn.base_dist
    return out


def coordinate_mask(msg, shape):
    """``None`` or a 0/1 array of ``shape`` (batch + event): the site's unmasked coordinates."""
    out = None
    for m, batch, event in _masks(msg["fn"]):
        if m is True:
            continue
        m = jnp.broadcast_to(jnp.asarray(m), batch)
        m = jnp.broadcast_to(m.reshape(batch + (1,) * len(event)), batch + event)
        out = m if out is None else out & m
    site_mask = msg.get("mask")
    if site_mask is not None and site_mask is not True:
        n = len(msg["fn"].event_shape)
        batch = shape[:len(shape) - n]
        m = jnp.broadcast_to(jnp.asarray(site_mask), batch).reshape(batch + (1,) * n)
        out = m if out is None else out & m
    if out is None:
        return None
    return jnp.broadcast_to(out, shape).astype(jnp.result_type(float))


def draw(msg, key):
    """``(logits, b, z, z̃)``, each of the site's batch + event shape.

    ``z = α + logit(u)`` (``b = H(z) ~ Bernoulli(σ(α))``) and ``z̃ ~ p(z | b)``,
    both differentiable in ``α``; ``b`` is stopped.
    """
    fn = msg["fn"]
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    logits = jnp.broadcast_to(bernoulli_base(fn).logits, shape)
    ku, kv = random.split(key)
    tiny = jnp.finfo(jnp.result_type(float)).tiny
    u = random.uniform(ku, shape, minval=tiny)
    v = random.uniform(kv, shape, minval=tiny)
    z = logits + jnp.log(u) - jnp.log1p(-u)  # logistic(α): b = H(z) ~ Bernoulli(σ(α))
    b = (sg(z) > 0).astype(z.dtype)
    # z̃ ~ p(z | b), reparameterized: u' uniform on b's side of σ(−α), written stably.
    z_tilde = jnp.where(b == 1.0, jax.nn.softplus(logits + jnp.log(v)) - jnp.log1p(-v),
                        -(jax.nn.softplus(-logits + jnp.log(v)) - jnp.log1p(-v)))
    return logits, b, z, z_tilde


def bernoulli_log_q(msg, logits, b):
    """``(log p(b), mask)`` per coordinate, masked coordinates 0 (``mask``: see
    :func:`coordinate_mask`)."""
    mask = coordinate_mask(msg, b.shape)
    lq = b * logits - jax.nn.softplus(logits)  # stable at α = 0
    return (lq if mask is None else lq * mask), mask


class ControlVariateStrategy(Strategy):
    """Base of ``relax`` and ``rebar``: the claim checks (module docstring)."""

    detach_own_term = True  # E[∇ log q(b)] = 0: its own log q enters the value detached
    why_bernoulli = ""  # said after "handles Bernoulli sites only"
    params_are = ""  # "<what> has parameters" / "<what> are params", for an infer-dict claim
    or_else = ""  # another way out of an infer-dict claim, after "strategies or configure"
    whose_params = "its"  # whose parameter is missing from params

    @classmethod
    def check_options(cls, msg: dict, claimer: str) -> None:
        """Raise a ``ValueError`` naming ``claimer`` and the site for a bad option."""

    @classmethod
    def needs_handler(cls, msg: dict) -> bool:
        """Whether the site has params that only a handler's claim lets ``objective.init`` see."""
        return True

    @classmethod
    def check(cls, msg, claimer):
        require_family(bernoulli_base(msg["fn"]), msg, claimer, cls.name, "Bernoulli",
                       why=cls.why_bernoulli, instead="mvd, enumerate, unordered_set or reinforce")
        cls.check_options(msg, claimer)

    @classmethod
    def validate(cls, msg, claimer):
        cls.check(msg, claimer)
        # claim() validates before prepare; a claim in the site's infer dict does not.
        msg["infer"][f"_stackvi_{cls.name}_claimed"] = True

    @classmethod
    def checked_key(cls, msg):
        """The site's PRNG key, after the checks; ``None`` when it is not drawn here
        (an observed or substituted value, or no seed)."""
        if msg["value"] is not None:
            return None
        claimer = f"infer={{'strategy': '{cls.name}'}}"
        cls.check(msg, claimer)
        if cls.needs_handler(msg) and not msg["infer"].get(f"_stackvi_{cls.name}_claimed"):
            raise ValueError(
                f"{claimer}: site '{msg['name']}' ({dist_name(msg)}) is "
                f"claimed by {cls.name} in its infer dict, but {cls.params_are} that "
                "objective.init only sees when a handler claims the site: use "
                f"{cls.name}(guide, sites=[...]), strategies or configure{cls.or_else}."
            )
        return numpyro.prng_key()

    @classmethod
    @contextmanager
    def params_in(cls, msg):
        """Inside: the site's ``numpyro.param`` calls; a param missing from ``params``
        (``substitute_params``' ``KeyError``) becomes an error naming it."""
        try:
            yield
        except KeyError as err:
            found = re.search(r"param site '([^']*)'", str(err))
            missing = f" '{found.group(1)}'" if found else ""
            raise ValueError(
                f"{cls.name}: site '{msg['name']}': {cls.whose_params} parameter{missing} is not "
                f"in params; objective.init creates it when the guide claims the site with "
                f"{cls.name} (and fit trains it on the gradient's variance): {cls.name} cannot "
                "run, or be measured, with params made without it."
            ) from err

    @classmethod
    def prepared(cls, msg):
        """What ``prepare`` stored for the site; an error if it ran outside an objective."""
        got = msg["infer"].get(f"_stackvi_{cls.name}")
        if got is None:
            raise ValueError(
                f"site '{msg['name']}' is claimed by {cls.name} outside an objective: run it "
                "through one (estimators.elbo) under a seed."
            )
        return got
