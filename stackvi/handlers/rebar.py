"""``rebar``: REBAR gradients for Bernoulli sites (Tucker et al., NeurIPS 2017).

RELAX (:mod:`stackvi.handlers.relax`) with the control variate the program
itself provides: for ``b ~ Bernoulli(σ(α))`` drawn as ``b = H(z)``, ``z = α +
logit(u)``, and ``z̃ ~ p(z | b)`` (reparameterized, as in ``relax``),

    ĝ_θ = [f(b) − η f(σ_λ(z̃))] ∇_θ log p(b) + η ∇_θ f(σ_λ(z)) − η ∇_θ f(σ_λ(z̃))

with ``σ_λ(z) = σ(z / λ)`` (the Concrete relaxation at temperature ``λ``) and
``f`` the site's learning signal (the costs that may depend on it,
Rao-Blackwellized by plate, as for ``reinforce`` and ``relax``). ``f(σ_λ(z))``
is the program itself re-run (:mod:`stackvi.gradients.rerun`) with the same key,
the params under ``stop_gradient`` and the site's value set to ``σ_λ(z)``,
which stays differentiable: the last two gradients flow through ``z`` and ``z̃``
only, the reparameterization of ``θ``. Two re-runs per claimed site, forward and
backward.

``η`` (a scalar per site) and ``λ`` are trained on the estimator's variance like
``relax``'s control variate (``SiteRecord.variance_params``:
``Objective.value_and_grad`` returns ``−∇‖ĝ‖²`` for them): params
``rebar:<site>:eta`` (init ``eta=1.0``) and ``rebar:<site>:log_temperature``
(``log λ``, init ``log(temperature)``, ``temperature=0.5``); the ``rebar:``
prefix is reserved. Any ``η`` and ``λ`` give an unbiased estimator.

What it needs of the program:

* the model (and everything downstream) must accept a relaxed value in
  ``(0, 1)`` at the site and use it *smoothly*: a Bernoulli's log-density, as
  stackvi scores it (:mod:`stackvi._compat`), extends continuously
  (``b log p + (1 − b) log(1 − p)``; with ``validate_args`` on, NumPyro only
  warns of the value, eagerly); a value used as an index, compared or cast to
  int makes ``f(σ_λ(z))`` a step function, whose jump the pathwise gradient
  misses (biased, and not detected); the guide's site must be a Bernoulli
  (a Categorical's value is an index: refused);
* no score-function or branching guide site drawn after it may depend on it
  (they would be re-drawn at the relaxed value: refused, by the data flow);
* a linear objective (``elbo``: per-element costs); sites next to enumerated
  or branched ones are refused. First derivatives only.

Claim it with a handler (``rebar(guide, sites=[...])``, ``strategies``,
``configure``) so ``objective.init`` sees ``η`` and ``λ``.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     b = numpyro.sample("b", dist.Bernoulli(0.3))
...     numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=1.5)
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", 0.4)))
>>> obj = estimators.elbo(model, rebar(guide))
>>> params = obj.init(jax.random.PRNGKey(0))
>>> sorted(params)
['a', 'rebar:b:eta', 'rebar:b:log_temperature']
>>> _, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1))
>>> bool(grads["rebar:b:eta"] != 0)   # −∇‖ĝ‖²: η learns from the first step
True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro

from stackvi.axes import Axis
from stackvi.gradients import SiteRecord, contract, plated_term, register, rerun, site_term
from stackvi.handlers.bernoulli_cv import ControlVariateStrategy, bernoulli_log_q, draw
from stackvi.terms import site_log_prob

__all__ = ["rebar", "PREFIX"]

PREFIX = "rebar:"  # reserved: rebar:<site>:eta, rebar:<site>:log_temperature

sg = jax.lax.stop_gradient


@register
class rebar(ControlVariateStrategy):
    """REBAR for the claimed Bernoulli sites (module docstring)."""

    name = "rebar"
    why_bernoulli = (" (its control variate sets the site to a relaxed value in [0, 1], which "
                     "only a Bernoulli's log-density extends to)")
    params_are = "rebar's η and temperature are params"

    def __init__(self, fn=None, sites=None, *, eta: float = 1.0, temperature: float = 0.5):
        super().__init__(fn, sites, eta=eta, temperature=temperature)

    @classmethod
    def check_options(cls, msg, claimer):
        eta = msg["infer"].get("eta", 1.0)
        temperature = msg["infer"].get("temperature", 0.5)
        if not (isinstance(eta, (int, float)) and math.isfinite(eta)):
            raise ValueError(f"{claimer}: site '{msg['name']}': eta must be a finite number, "
                             f"got {eta!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"{claimer}: site '{msg['name']}': temperature must be > 0, "
                             f"got {temperature!r}")

    @classmethod
    def prepare(cls, msg):
        key = cls.checked_key(msg)
        if key is None:
            return
        logits, b, z, z_tilde = draw(msg, key)
        pre = f"{PREFIX}{msg['name']}:"
        with cls.params_in(msg):
            eta = numpyro.param(pre + "eta", jnp.asarray(float(msg["infer"].get("eta", 1.0))))
            log_t = numpyro.param(pre + "log_temperature", jnp.log(jnp.asarray(
                float(msg["infer"].get("temperature", 0.5)))))
        ordinal, value = rerun.substitute(msg, cls.name)
        msg["infer"]["_stackvi_rebar"] = (logits, b, z, z_tilde, eta, log_t, ordinal, value,
                                          frozenset({pre + "eta", pre + "log_temperature"}))

    @classmethod
    def transform(cls, msg):
        _, b, _, _, _, _, ordinal, value, _ = cls.prepared(msg)
        value = sg(b) if value is None else value  # a re-run's relaxed value: differentiable
        if ordinal is not None:
            value = rerun.tagged(msg, value, cls.name)
        msg["value"] = value
        msg["intermediates"] = []

    @classmethod
    def record(cls, msg):
        logits, b, z, z_tilde, eta, log_t, ordinal, _, names = msg["infer"]["_stackvi_rebar"]
        fn = msg["fn"]
        batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
        size = math.prod(event)
        lq, mask = bernoulli_log_q(msg, logits, b)
        lq = lq.reshape(batch + (size,)).sum(-1)
        m = jnp.ones(batch) if mask is None else jnp.max(mask.reshape(batch + (size,)), -1)
        element = Axis(f"rebar:{msg['name']}:element")
        coord = Axis(f"rebar:{msg['name']}:coord")
        temperature = jnp.exp(log_t)
        extra = (plated_term(msg, lq[..., None], element, "log_prob"),
                 plated_term(msg, (eta * m)[..., None], element, "eta"),
                 site_term(msg, jax.nn.sigmoid(z / temperature), coord, "σ(z/λ)"),
                 site_term(msg, jax.nn.sigmoid(z_tilde / temperature), coord, "σ(z~/λ)"))
        static = None if ordinal is None else rerun.Relaxation(
            ordinal, 2, frozenset(f.name for f in msg.get("cond_indep_stack", ()) if f.size > 1))
        return SiteRecord(msg["name"], site_log_prob({**msg, "scale": None}), cls.name,
                          extra=extra, static=static, variance_params=names)

    @classmethod
    def gradient(cls, record, ctx):
        """``Σ (lq − sg lq)(f − η f̃) + η (f_z − sg f_z) − η (f̃ − sg f̃)``: value 0, gradient ĝ."""
        if len(record.extra) != 6:
            raise ValueError(
                f"site '{record.name}' (claimed by rebar) has no costs at its relaxed values: "
                "they are evaluated by Objective.value_and_grad (the program is re-run); "
                "surrogate() on hand-collected records cannot do that."
            )
        if ctx.exact:
            raise ValueError(
                f"site '{record.name}' (claimed by rebar) is next to enumerated or branched "
                "sites, whose exact weights its re-run costs do not carry yet. Use relax, "
                "disarm or reinforce for it."
            )
        lq, eta, _, _, f_z, f_tilde = record.extra
        f = (ctx.signal(record), record.log_prob.names)
        d = (lq.array - sg(lq.array), lq.names)
        e = (eta.array, eta.names)
        # f̃ is not stopped in the score term: its θ-gradient meets (lq − sg lq) = 0, and
        # its η, λ-gradient is what trains them on the variance (∂ ĝ_θ must be exact).
        acc = contract([d, f], {}, record.name)
        acc = acc - contract([d, e, (f_tilde.array, f_tilde.names)], {}, record.name)
        acc = acc + contract([e, (f_z.array - sg(f_z.array), f_z.names)], {}, record.name)
        acc = acc - contract([e, (f_tilde.array - sg(f_tilde.array), f_tilde.names)], {},
                             record.name)
        return acc
