"""Log-densities with exact gradients where NumPyro's are wrong under this JAX.

Under JAX 0.10, ``jax.grad(jnp.abs)(0.) == 1``; NumPyro's stable logits forms
of ``Bernoulli`` and ``Binomial`` use ``|logits|``, so at exactly
``logits == 0`` — the most common initialization — the derivative of
``log_prob`` is off by ``n/2`` (``b`` instead of ``b − ½`` for a Bernoulli).
Every log-density stackvi takes goes through :func:`log_density`, which for
those families (also inside ``expand``/``to_event``/``mask`` wrappers) uses
``k·logits − n·softplus(logits)``: the same values, and ``softplus``'s
gradient is exact at 0. ``Bernoulli(probs)`` uses ``b log p + (1 − b) log(1 − p)``
(NumPyro's value on {0, 1}, and defined off it for relaxed values). Everything
else is NumPyro's own ``log_prob``.

>>> import jax, numpyro.distributions as dist
>>> float(jax.grad(lambda l: log_density(dist.Bernoulli(logits=l), 1.0))(0.0))
0.5
>>> float(jax.grad(lambda l: log_density(dist.Binomial(3, logits=l).expand([2]), 1.0).sum())(0.0))
-1.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import gammaln, xlog1py, xlogy
from numpyro.distributions.distribution import ExpandedDistribution, Independent, MaskedDistribution

__all__ = ["log_density", "unmasked", "compute_markov_factors", "get_shift", "shift_name"]


def _bernoulli_logits(d, value):
    x, y = d.logits, value
    finite = jnp.isfinite(x)
    safe = jnp.where(finite, x, 0.0)
    usual = y * safe - jax.nn.softplus(safe)
    # ±inf logits: log p is 0 where the value is the certain one, −inf elsewhere
    return jnp.where(finite, usual, -jnp.inf * jnp.logical_xor(y, x > 0))


def _binomial_logits(d, value):
    n = jnp.asarray(d.total_count, dtype=jnp.result_type(float))
    log_choose = gammaln(n + 1) - gammaln(value + 1) - gammaln(n - value + 1)
    return log_choose + value * d.logits - n * jax.nn.softplus(d.logits)


def _bernoulli_probs(d, value):
    # NumPyro's returns −inf off {0, 1}; this linear form is its value on {0, 1} and the
    # continuous extension that relaxed values (handlers.gumbel_softmax) need. Integer
    # samples (NumPyro's) become floats: xlogy's JVP cannot multiply an integer's float0.
    value = jnp.asarray(value, dtype=jnp.result_type(d.probs, float))
    return xlogy(value, d.probs) + xlog1py(1 - value, -d.probs)


_FIXED = {dist.BernoulliLogits: _bernoulli_logits, dist.BinomialLogits: _binomial_logits,
          dist.BernoulliProbs: _bernoulli_probs}


def _fixable(fn) -> bool:
    while isinstance(fn, (ExpandedDistribution, Independent, MaskedDistribution)):
        fn = fn.base_dist
    return type(fn) in _FIXED


def _fixed(fn, value):
    if isinstance(fn, ExpandedDistribution):
        lp = _fixed(fn.base_dist, value)
        shape = jax.lax.broadcast_shapes(
            tuple(fn.batch_shape), jnp.shape(value)[:max(jnp.ndim(value) - fn.event_dim, 0)])
        return jnp.broadcast_to(lp, shape)
    if isinstance(fn, Independent):
        lp = _fixed(fn.base_dist, value)
        n = fn.reinterpreted_batch_ndims
        return jnp.sum(lp, axis=tuple(range(-n, 0))) if n else lp
    if isinstance(fn, MaskedDistribution):
        mask = fn._mask  # noqa: SLF001 - NumPyro stores the mask only here
        if mask is True:
            return _fixed(fn.base_dist, value)
        lp = _fixed(fn.base_dist, value)
        if mask is False:
            return jnp.zeros_like(lp)
        return jnp.where(mask, lp, 0.0)
    if fn._validate_args:  # noqa: SLF001 - keep NumPyro's support check
        fn._validate_sample(value)  # noqa: SLF001
    return _FIXED[type(fn)](fn, value)


def unmasked(fn):
    """``fn`` without NumPyro ``mask`` wrappers (also inside ``expand``/``to_event``).

    A masked site's *cost* is zero, but its value is still drawn from ``fn``: the
    weights of an enumerated site are those of the normalized distribution.
    """
    if isinstance(fn, MaskedDistribution):
        return unmasked(fn.base_dist)
    if isinstance(fn, Independent):
        return Independent(unmasked(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, ExpandedDistribution):
        return unmasked(fn.base_dist).expand(fn.batch_shape)
    return fn


def log_density(fn, value, intermediates=None):
    """``fn.log_prob(value)``, with an exact gradient for the families in the module docstring."""
    if _fixable(fn):
        return _fixed(fn, value)
    return fn.log_prob(value, intermediates) if intermediates else fn.log_prob(value)


# NumPyro's sum-product over time for ``scan`` models (``numpyro.contrib.funsor``'s
# internals: no public name). Checked against the versions we test.
def _markov_helpers():
    import numpyro
    from packaging.version import Version

    if Version(numpyro.__version__) < Version("0.13"):
        raise ImportError(f"stackvi needs numpyro >= 0.13 for model-side enumeration in scan, "
                          f"found {numpyro.__version__}")
    from numpyro.contrib.funsor import infer_util

    return infer_util.compute_markov_factors, infer_util._get_shift, infer_util._shift_name


def compute_markov_factors(*args):
    return _markov_helpers()[0](*args)


def get_shift(name: str) -> int:
    return _markov_helpers()[1](name)


def shift_name(name: str, t: int) -> str:
    return _markov_helpers()[2](name, t)


# The site NumPyro was processing when an error was raised: read off the traceback's frames
# of ``numpyro.primitives.apply_stack`` (its local ``msg``; internals, checked to exist).
def failing_site(exc: BaseException) -> dict | None:
    """The innermost NumPyro site message being processed where ``exc`` was raised."""
    import numpyro.primitives

    if "msg" not in numpyro.primitives.apply_stack.__code__.co_varnames:
        return None  # a NumPyro whose apply_stack we do not know: no site to name
    subsample = numpyro.primitives.plate._subsample.__code__  # a plate's size and dim checks
    found, tb = None, exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if (frame.f_code is numpyro.primitives.apply_stack.__code__
                and isinstance(frame.f_locals.get("msg"), dict)):
            found = frame.f_locals["msg"]
        elif frame.f_code is subsample and isinstance(frame.f_locals.get("name"), str):
            found = {"type": "plate", "name": frame.f_locals["name"]}
        tb = tb.tb_next
    return found
