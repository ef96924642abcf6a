"""Stop gradients at parameters or at samples, without touching the program.

* :class:`stop_params` — every ``param`` site's value is seen through
  ``jax.lax.stop_gradient``. DReG uses it to evaluate ``log q_φ(z)`` with the
  guide's parameters held fixed while ``z`` itself stays differentiable.
* :class:`stop_samples` — every latent ``sample`` site's value is detached
  (and its cached ``intermediates`` dropped), so nothing downstream
  differentiates *through* the sample. Reweighted wake-sleep and ``normalize``
  use it: their gradients are ``∇ log p`` / ``∇ log q`` at fixed samples.

Both act in ``postprocess_message``, which runs outermost-first, so the
detached value is what inner handlers (``trace``) record and what the
program's next line sees — put them outside ``trace``.

>>> import jax, numpyro, numpyro.distributions as dist
>>> def guide(m):
...     return numpyro.sample("z", dist.Normal(numpyro.param("m", m), 1.0))
>>> f = lambda m: numpyro.handlers.seed(guide, 0)(m)
>>> float(jax.grad(f)(0.0)), float(jax.grad(lambda m: stop_samples(f)(m))(0.0))
(1.0, 0.0)
>>> float(jax.grad(lambda m: stop_params(f)(m))(0.0))
0.0
"""

from __future__ import annotations

import jax
from numpyro.primitives import Messenger

__all__ = ["stop_params", "stop_samples"]


class stop_params(Messenger):
    """Hold every ``param`` site fixed for differentiation (values unchanged)."""

    def postprocess_message(self, msg):
        if msg["type"] == "param" and msg["value"] is not None:
            msg["value"] = jax.tree_util.tree_map(jax.lax.stop_gradient, msg["value"])


class stop_samples(Messenger):
    """Detach every latent sample's value from the parameters that produced it."""

    def postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["value"] is not None:
            msg["value"] = jax.lax.stop_gradient(msg["value"])
            # Cached intermediates would carry the pathwise gradient into log_prob.
            msg["intermediates"] = []
