"""``relax``: RELAX gradients for Bernoulli sites (Grathwohl et al., ICLR 2018).

For ``b ~ Bernoulli(σ(α))`` drawn as ``b = H(z)`` with ``z = α + logit(u)``
(``u ~ U(0, 1)``, a reparameterized logistic), ``z̃ ~ p(z | b)`` drawn by the
conditional reparameterization (``v ~ U(0, 1)``; ``z̃ = softplus(α + log v) −
log(1 − v)`` when ``b = 1``, its mirror image when ``b = 0``), and any
control variate ``c_φ``,

    ĝ_θ = [f(b) − c_φ(z̃)] ∇_θ log p(b) + ∇_θ c_φ(z) − ∇_θ c_φ(z̃)

is unbiased for ``∇_θ E[f(b)]`` (``f``: the site's learning signal, the costs
that may depend on it, Rao-Blackwellized by plate as for ``reinforce``). With
``c ≡ 0`` it is REINFORCE; a ``c_φ`` close to ``f ∘ H`` makes the first term
small while the last two carry the gradient, pathwise through ``z`` and ``z̃``.

``c_φ`` is trained to minimise the estimator's variance: its parameters are
declared in the site's record (``SiteRecord.variance_params``), and
``Objective.value_and_grad`` — so :func:`stackvi.fit` and your own optax loop
alike — returns for them ``−∇_φ ‖ĝ‖²`` (``ĝ``: the estimate of the gradient of
every other parameter; ``E ĝ`` does not depend on ``φ``, so this is minus the
gradient of the variance), so that the usual ascent step on the objective is
a descent step on the variance. It costs one more differentiation of the
program (reverse over reverse) per step.

The default ``c_φ`` is a small MLP ``ℝ → ℝ`` (one tanh layer of ``hidden``
units) applied to every coordinate of ``z``, shared by the site's elements,
with parameters ``relax:<site>:w1``, ``…:b1``, ``…:w2``, ``…:b2`` (the
``relax:`` prefix is reserved). They are ordinary param sites: created by
``objective.init``, optimized by ``fit``, checkpointed. It starts at ``c ≡ 0``
(REINFORCE) and learns from the first step. Your own
``control_variate(z, site) -> array`` may use ``numpyro.param`` /
``numpyro.module`` (those params are trained on the variance too); it returns
either the shape of ``z`` (one value per coordinate, per-coordinate
estimator) or the site's batch shape (one value per element, over its event).
It must treat a plate's elements separately (element ``i``'s value may depend
on ``z[i]`` only), like a baseline.

Claim it with a handler (``relax(guide, sites=[...])``, ``strategies``,
``configure``) so ``objective.init`` sees the control variate's params; a
claim written in the site's ``infer`` dict is refused for the default one.
First derivatives only (``objective.surrogate`` refuses it).

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("b", dist.Bernoulli(0.3))
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("a", 0.4)))
>>> obj = estimators.elbo(model, relax(guide, hidden=4))
>>> params = obj.init(jax.random.PRNGKey(0))
>>> sorted(params)
['a', 'relax:b:b1', 'relax:b:b2', 'relax:b:w1', 'relax:b:w2']
>>> _, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(1))
>>> bool(grads["relax:b:w2"].any())   # −∇‖ĝ‖²: φ learns from the first step
True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro
from numpyro.primitives import Messenger

from stackvi.axes import Axis
from stackvi.gradients import SiteRecord, check_plated, contract, plated_term, register, select
from stackvi.handlers.bernoulli_cv import ControlVariateStrategy, bernoulli_log_q, draw
from stackvi.terms import Term, site_log_prob

__all__ = ["relax", "PREFIX"]

PREFIX = "relax:"  # reserved: the default control variate's params are relax:<site>:...

sg = jax.lax.stop_gradient


def mlp(z, site, hidden: int = 16):
    """The default control variate: ``Σ_j w2_j tanh(w1_j z + b1_j) + b2``, per coordinate.

    Initialised at ``c ≡ 0`` with the hidden units' thresholds spread over
    ``[−3, 3]`` (a basis of smooth steps in ``z``, the shape of ``f ∘ H``).
    """
    pre = f"{PREFIX}{site['name']}:"
    w1 = numpyro.param(pre + "w1", jnp.ones(hidden))
    b1 = numpyro.param(pre + "b1", jnp.linspace(-3.0, 3.0, hidden))
    w2 = numpyro.param(pre + "w2", jnp.zeros(hidden))
    b2 = numpyro.param(pre + "b2", jnp.zeros(()))
    return jnp.tanh(z[..., None] * w1 + b1) @ w2 + b2


class _param_names(Messenger):
    """Collect the names of the param sites used inside the block."""

    def __init__(self):
        self.names: list[str] = []
        super().__init__(None)

    def process_message(self, msg):
        if msg["type"] == "param":
            self.names.append(msg["name"])


@register
class relax(ControlVariateStrategy):
    """RELAX with a learned control variate for the claimed Bernoulli sites (module docstring)."""

    name = "relax"
    params_are = "relax's default control variate has parameters"
    or_else = " (or pass a parameter-free control_variate)"
    whose_params = "its control variate's"

    def __init__(self, fn=None, sites=None, *, control_variate=None, hidden: int = 16):
        super().__init__(fn, sites, control_variate=control_variate, hidden=hidden)

    @classmethod
    def check_options(cls, msg, claimer):
        cv = msg["infer"].get("control_variate")
        if cv is not None and not callable(cv):
            raise ValueError(f"{claimer}: site '{msg['name']}': control_variate must be a "
                             f"function (z, site) -> array, got {cv!r}")
        hidden = msg["infer"].get("hidden", 16)
        if not (isinstance(hidden, int) and hidden >= 1):
            raise ValueError(f"{claimer}: site '{msg['name']}': hidden must be a positive int, "
                             f"got {hidden!r}")

    @classmethod
    def needs_handler(cls, msg):
        return msg["infer"].get("control_variate") is None  # a user's may have no params

    @classmethod
    def prepare(cls, msg):
        key = cls.checked_key(msg)
        if key is None:
            return
        check_plated(msg, cls.name)
        logits, b, z, z_tilde = draw(msg, key)
        cv = msg["infer"].get("control_variate")
        control = cv if cv is not None else (
            lambda x, site: mlp(x, site, msg["infer"].get("hidden", 16)))
        collect = _param_names()
        with cls.params_in(msg), collect:
            c, c_tilde = control(z, msg), control(z_tilde, msg)
        c, c_tilde = jnp.asarray(c), jnp.asarray(c_tilde)
        batch, shape = tuple(msg["fn"].batch_shape), z.shape
        for out in (c, c_tilde):
            if out.shape not in (shape, batch):
                raise ValueError(
                    f"relax: site '{msg['name']}': the control variate returned shape "
                    f"{out.shape}; it must return the shape of z {shape} (per coordinate) or "
                    f"the site's batch shape {batch} (per element)."
                )
        msg["infer"]["_stackvi_relax"] = (logits, b, c, c_tilde, frozenset(collect.names))

    @classmethod
    def transform(cls, msg):
        msg["value"] = sg(cls.prepared(msg)[1])
        msg["intermediates"] = []

    @classmethod
    def record(cls, msg):
        logits, b, c, c_tilde, names = msg["infer"]["_stackvi_relax"]
        fn = msg["fn"]
        batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
        shape = batch + event
        size = math.prod(event)
        lq, mask = bernoulli_log_q(msg, logits, b)
        if c.shape != shape:  # one value per element: its event's coordinates together
            m = None if mask is None else jnp.max(mask.reshape(batch + (size,)), -1)
            c, c_tilde = (x if m is None else x * m for x in (c, c_tilde))
            c, c_tilde = c[..., None], c_tilde[..., None]
        else:
            if mask is not None:
                c, c_tilde = c * mask, c_tilde * mask
            c, c_tilde = c.reshape(batch + (size,)), c_tilde.reshape(batch + (size,))
        coord = Axis(f"relax:{msg['name']}:coord")
        coord_c = coord if c.shape[-1] == size else Axis(f"relax:{msg['name']}:element")
        extra = (plated_term(msg, lq.reshape(batch + (size,)), coord, "log_prob"),
                 plated_term(msg, c, coord_c, "c(z)"), plated_term(msg, c_tilde, coord_c, "c(z~)"))
        return SiteRecord(msg["name"], site_log_prob({**msg, "scale": None}), cls.name,
                          extra=extra, variance_params=names)

    @classmethod
    def gradient(cls, record, ctx):
        """``Σ (lq − sg lq)·(f − c(z̃)) + (c(z) − sg) − (c(z̃) − sg)``: value 0, gradient ĝ."""
        if ctx.exact:  # other sites enumerated or branched: branch 0, exact (stopped) weights
            branches = ctx.branches
            w = {a: Term(t.label, sg(t.array), t.names) for a, t in ctx.weights.items()}
        else:
            branches, w = set(), {}
        lq, c, c_tilde = (select(t.array, t.names, branches) for t in record.extra)
        f_names = select(record.log_prob.array, record.log_prob.names, branches)[1]
        f = ctx.signal(record)
        d = (lq[0] - sg(lq[0]), lq[1])
        # f − c(z̃) is not stopped: its θ-gradient meets (lq − sg lq) = 0, and its
        # φ-gradient is what trains φ on the variance (∂φ ĝ_θ must be exact).
        acc = contract([d, (f, f_names)], w, record.name)
        acc = acc - contract([d, c_tilde], w, record.name)
        acc = acc + contract([(c[0] - sg(c[0]), c[1])], w, record.name)
        acc = acc - contract([(c_tilde[0] - sg(c_tilde[0]), c_tilde[1])], w, record.name)
        return acc
