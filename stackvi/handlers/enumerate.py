"""``enumerate``: exact expectations over guide sites with finite support.

A claimed site takes *every* value of its support at once: the support is laid
out along a fresh dim to the left of all plates, and that dim gets a name,
``enum:<site>``, so every log-density that broadcasts along it (later guide
sites, the replayed model) becomes a :class:`~stackvi.terms.Term` with that
named axis. The estimator then contracts the terms with the exact weights
``q(z = k)`` (gradient through the weights) instead of summing them, see
:mod:`stackvi.estimators.contract`. Inside a plate of size N the elements are
enumerated in parallel: cost O(N·|support|), never |support|^N. That needs the
program to respect its plates (a cost that depends on element *i* of an
enumerated site lives in the same plate), which is checked.

Enumeration composes with every other strategy (REINFORCE, pathwise, MVD)
at other sites, and is defined for objectives whose value is ``Terms``
(``elbo``): a nonlinear objective (IWAE's ``logsumexp``) is an error naming
the site.

Dims: an objective's :func:`enum_scope` (entered by ``log_weight``) hands out
one dim per enumerated (or MVD-branched) site, starting left of the deepest
plate nesting of model and guide, found once per trace by a blocked pre-run.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     numpyro.sample("b", dist.Bernoulli(0.5))
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(numpyro.param("p", 0.3)))
>>> obj = estimators.elbo(model, enumerate(guide))
>>> params = obj.init(jax.random.PRNGKey(0))
>>> value, grads = obj.value_and_grad(params, jax.random.PRNGKey(1))
>>> round(float(value), 4)    # -KL(Bern(0.3) || Bern(0.5)), exact: no sampling
-0.0823
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import jax
from numpyro.handlers import block, replay, seed, trace

from stackvi import terms as _terms
from stackvi._compat import unmasked
from stackvi.axes import Axis
from stackvi.gradients import rerun
from stackvi.gradients.dataflow import tag
from stackvi.gradients.records import SiteRecord
from stackvi.gradients.strategy import Strategy, register
from stackvi.gradients.strategy import dist_name as _dist_name
from stackvi.terms import site_log_prob

__all__ = ["enumerate", "enum_scope", "allocate_dim", "check_site_shapes"]


class _Scope:
    """Dims handed out to enumerated / branched sites during one run of model and guide."""

    def __init__(self, model, guide, args, kwargs):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.next_dim: int | None = None
        self.nesting: int | None = None
        self.names: dict[int, str] = {}
        self.disabled = False


_SCOPES: list[_Scope] = []


def _current() -> _Scope | None:
    return _SCOPES[-1] if _SCOPES else None


@contextmanager
def enum_scope(model: Callable, guide: Callable, args: tuple = (), kwargs: dict | None = None):
    """The dims of enumerated/branched sites for one run of ``guide`` then ``model``.

    Objectives get it from ``log_weight``; write it yourself only for a new
    program that runs a guide and a model without ``log_weight``.
    """
    scope = _Scope(model, guide, args, kwargs or {})
    _SCOPES.append(scope)
    _terms._DIM_NAMES.append(scope.names)
    try:
        yield scope
    finally:
        _terms._DIM_NAMES.pop()
        _SCOPES.pop()


def _max_nesting(scope: _Scope) -> int:
    """Deepest plate nesting (or batch rank) of guide and model, from a blocked pre-run."""
    scope.disabled = True
    try:
        # block: the pre-run's messages never reach the handlers outside (the
        # trace being recorded); params take their init values, enough for shapes.
        with block():
            g = trace(seed(scope.guide, 0)).get_trace(*scope.args, **scope.kwargs)
            m = trace(seed(replay(scope.model, g), 1)).get_trace(*scope.args, **scope.kwargs)
    finally:
        scope.disabled = False
    depth = 0
    for tr in (g, m):
        for site in tr.values():
            for f in site.get("cond_indep_stack", ()):
                if f.dim is not None:
                    depth = max(depth, -f.dim)
            if site["type"] == "sample":
                depth = max(depth, len(site["fn"].batch_shape))
    return depth


def allocate_dim(msg: dict, prefix: str) -> tuple[int, Axis] | None:
    """A fresh dim left of all plates, named ``Axis("<prefix>:<site>")`` (``None`` outside)."""
    scope = _current()
    if scope is None or scope.disabled:
        return None
    if scope.next_dim is None:
        scope.nesting = _max_nesting(scope)
        scope.next_dim = -scope.nesting - 1
    batch = msg["fn"].batch_shape
    dim = min(scope.next_dim, -len(batch) - 1)
    name = Axis(f"{prefix}:{msg['name']}")
    scope.next_dim = dim - 1
    scope.names[dim] = name
    return dim, name


def check_site_shapes(*traces: dict) -> None:
    """With enumerated/branched dims in play, plate dims must hold plates (or size 1).

    A batch dim of size > 1 inside the plate region that no plate declares is
    how an enumerated dim ends up misaligned (e.g. a cost summing a plated
    enumerated site over its plate): it would be summed silently, so it is an
    error, as in Pyro's ``TraceEnum_ELBO``.
    """
    scope = _current()
    if scope is None or scope.nesting is None or not scope.names:
        return
    for tr in traces:
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            plates = {f.dim for f in site.get("cond_indep_stack", ()) if f.dim is not None}
            batch = tuple(site["fn"].batch_shape)
            for dim in range(-min(len(batch), scope.nesting), 0):
                if batch[dim] != 1 and dim not in plates:
                    raise ValueError(
                        f"site '{name}' ({_dist_name(site)}): batch dim {dim} has size "
                        f"{batch[dim]} but no plate declares it, while sites are enumerated "
                        f"({sorted(scope.names.values())}). A cost that combines the elements of "
                        "an enumerated/branched plated site (e.g. sums over its plate) cannot "
                        "be laid out in parallel: keep the cost inside the plate, use reinforce "
                        "for that site, or declare the dim with a plate / .to_event()."
                    )


def _support_derivative(msg: dict):
    """``Σ_k ∇q(k) · f(k)`` as a decomposition (θ_k = q(k), c = 1, q⁺ = δ_k, no q⁻): the
    exact derivative in the site given the rest, for an objective that is not linear in
    the sites (IWAE's logsumexp: no per-site contraction exists), the value at a sample."""
    fn = msg["fn"]
    if tuple(fn.event_shape):
        raise ValueError(
            f"site '{msg['name']}' ({_dist_name(msg)}) is claimed by enumerate under a "
            "nonlinear objective, where its derivative is summed over the support by re-runs "
            "of the program; that needs a site without event dims. Use reinforce for it."
        )

    def decompose(x, key):
        import jax.numpy as jnp

        support = fn.enumerate_support(expand=True)  # (S, *batch)
        log_q = unmasked(fn).log_prob(support)
        one = jnp.ones(support.shape[1:])
        return support, [(jnp.exp(log_q[k]), one, k, None) for k in range(support.shape[0])]

    return decompose


def _owned(msg: dict, value, dim: int, name: str) -> None:
    if value.shape[dim] > 1:  # a size-1 axis is dropped from the terms: nothing to check
        kind = msg["infer"].get("strategy", name.split(":")[0])
        value = tag(value, name, msg["name"], _dist_name(msg), f"claimed by {kind}")
    msg["value"] = value
    msg["infer"] = {**msg["infer"], "_stackvi_owns_value": True, "_stackvi_axis": name,
                    "_stackvi_dim": dim}


@register
class enumerate(Strategy):  # noqa: A001 - the strategy's name, as in the design
    """Exact sum over the finite support of the claimed sites (see the module docstring).

    Also claimed by NumPyro's own ``infer={"enumerate": "parallel"}`` on a guide site.
    """

    name = "enumerate"
    owns_value = True
    higher_order = "exact"

    @staticmethod
    def validate(msg, claimer):
        if not msg["fn"].has_enumerate_support:
            raise ValueError(
                f"{claimer}: site '{msg['name']}' ({_dist_name(msg)}) has no finite support to "
                "enumerate. Use reparam or mvd (continuous) or reinforce for it."
            )

    @staticmethod
    def prepare(msg):
        if msg["value"] is not None:
            return
        scope = _current()
        if scope is not None and scope.disabled:
            # The blocked pre-run (shapes only): a concrete support value, never a traced
            # sample, so code that indexes NumPy arrays with the site's value runs under jit.
            with jax.ensure_compile_time_eval():
                msg["value"] = msg["fn"].enumerate_support(expand=True)[0]
            return
        session = rerun.active()
        if session is not None and session.nonlinear and rerun.prepare(
                msg, _support_derivative(msg), "enumerate"):
            return  # under a nonlinear objective: the derivative summed over the support
        got = allocate_dim(msg, "enum")
        if got is None:
            return
        dim, name = got
        fn = msg["fn"]
        with jax.ensure_compile_time_eval():  # concrete values, as NumPyro's own enum gives
            support = fn.enumerate_support(expand=False)  # (S,) + (1,)*batch + event
        shape = (support.shape[0],) + (1,) * (-dim - 1) + tuple(fn.event_shape)
        _owned(msg, support.reshape(shape), dim, name)

    @staticmethod
    def transform(msg):
        if not msg["infer"].get("_stackvi_owns_value"):
            raise ValueError(
                f"site '{msg['name']}' ({_dist_name(msg)}) is claimed by enumerate outside an "
                "objective: enumeration needs the dims an objective hands out. Run the guide "
                "through an estimator (estimators.elbo) or inside handlers.enum_scope."
            )
        msg["intermediates"] = []

    @classmethod
    def record(cls, msg):
        if "_stackvi_continuation" in msg["infer"]:
            # first derivatives only, like mvd's (objective.surrogate refuses it)
            return rerun.record(msg, "mvd")
        # The weights are q(z = k) itself: no mask, no scale (those act on the costs).
        weights = site_log_prob({**msg, "fn": unmasked(msg["fn"]), "scale": None, "mask": None,
                                 "intermediates": None}, label=msg["name"])
        return SiteRecord(msg["name"], weights, cls.name, axis=msg["infer"]["_stackvi_axis"])

    # Its gradient flows through the weights, which the estimator contracts the value
    # with (stackvi.gradients.contract): no term of its own.
