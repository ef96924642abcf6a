"""Objectives as programs, and the machinery that turns them into gradient estimators.

An objective is a Python function (a *program*) that runs guides and models
through stackvi's effects and returns either

* :class:`~stackvi.terms.Terms` — a structured sum of log-densities (linear
  objectives such as the ELBO), or
* a scalar array — anything else (IWAE's ``logsumexp``, a CUBO, a reward).

:class:`Objective` runs the program under ``seed`` and the current parameters,
collects every *non-pathwise* sample drawn inside it (score-function nodes,
from :func:`~stackvi.handlers.strategies.simulate`), and builds one surrogate
scalar whose value is the objective estimate and whose gradient is an unbiased
estimate of the objective's gradient::

    surrogate = value + Σ_nodes Σ_elements (log q − sg(log q)) · sg(L − b)

where ``L`` is the node's learning signal: for ``Terms``, only the terms that
can depend on that element — aligned by plate and particle axis names, which
is Rao-Blackwellization by conditional independence — and for a scalar, the
whole value. ``b`` is the node's baseline (:mod:`stackvi.baselines`).
Pathwise sites need nothing: their gradient flows through ``value``.

A new objective is a few lines::

    def program(*args, **kwargs):
        lw = particles(log_weight(model, guide), 10)(*args, **kwargs)
        return jax.nn.logsumexp(lw.per(("particles",))) - jnp.log(10)
    iwae = Objective(program, model, guide)

All methods are pure functions of their inputs: jit them yourself.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from jax import random
from numpyro.distributions import biject_to, constraints
from numpyro.handlers import replay, seed, trace
from numpyro.primitives import Messenger

from stackvi.estimators.contract import (
    downstream,
    exact_surrogate,
    expected_total,
    mark_upstream,
    needs_contraction,
    pathwise_total,
)
from stackvi.estimators.marginalize import model_terms
from stackvi.estimators.signals import LearningSignal
from stackvi.handlers.density import trace_terms
from stackvi.handlers.enumerate import enum_scope
from stackvi.handlers.strategies import Node, _current_collector, collect_nodes, simulate
from stackvi.sharding import constrain_particles
from stackvi.terms import Term, Terms

__all__ = [
    "Objective",
    "particles",
    "score_model",
    "log_weight",
    "surrogate",
    "NonFiniteError",
]

PARTICLES = "particles"


class NonFiniteError(FloatingPointError):
    """The objective is not finite; the message names the offending sites."""


# --------------------------------------------------------------------------- nodes as pytrees

def _node_flatten(node: Node):
    return (node.log_prob, node.extra), (node.label, node.baseline, node.kind, node.info)


def _node_unflatten(aux, children):
    return Node(aux[0], children[0], aux[1], aux[2], tuple(children[1]), aux[3])


jax.tree_util.register_pytree_node(Node, _node_flatten, _node_unflatten)


# --------------------------------------------------------------------------- building blocks

def particles(fn: Callable, num: int, axis: str = PARTICLES) -> Callable:
    """Run ``fn`` ``num`` times independently, vectorized with ``jax.vmap``.

    Outputs gain a leading axis; :class:`Terms` outputs and the score-function
    nodes drawn inside get it as a named independence axis ``axis``. Needs a
    ``seed`` in context (objectives provide one).
    """
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"number of particles must be a positive int, got {num!r}")

    def run(*args, **kwargs):
        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError("particles() needs a random key: run it under numpyro.handlers.seed")

        # One minibatch for all particles: a subsampled plate draws its indices
        # from a key shared by the particles (else IWAE-style bounds would mix
        # different minibatches inside one logsumexp).
        plate_key = numpyro.prng_key()

        def one(k):
            with collect_nodes() as nodes:
                out = seed(_shared_subsample(fn, rng_key=plate_key), k)(*args, **kwargs)
            return out, tuple(nodes)

        # Under stackvi.sharding.sharded_particles the particles split over devices.
        keys = constrain_particles(random.split(key, num))
        if num == 1:
            # Same key and result as vmap over one particle, without the batch axis
            # inside: vmap's axis makes XLA materialize transposed copies of every
            # activation gradient (+60% per step on the 784-200-10 VAE, batch 1024).
            out, nodes = jax.tree_util.tree_map(lambda a: jnp.expand_dims(a, 0), one(keys[0]))
        else:
            out, nodes = jax.vmap(one)(keys)
        parent = _current_collector()
        if parent is not None:
            parent.extend(n.with_axis(axis) for n in nodes)
        return out.with_axis(axis) if isinstance(out, Terms) else out

    return run


class _shared_subsample(Messenger):
    """Give every subsampled plate a key derived from ``rng_key`` and the plate's name."""

    def __init__(self, fn=None, rng_key=None):
        self.rng_key = rng_key
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["value"] is None and msg["kwargs"]["rng_key"] is None:
            salt = zlib.crc32(msg["name"].encode())
            msg["kwargs"]["rng_key"] = random.fold_in(self.rng_key, salt)


def _site_desc(site: dict) -> str:
    return f"'{site['name']}' ({type(site['fn']).__name__}, shape {tuple(site['fn'].shape())})"


def score_model(model: Callable, guide_trace: dict, *args, **kwargs) -> dict:
    """Trace ``model`` with its latent sites set to the guide's values, checking they match."""
    model_trace = trace(replay(model, guide_trace)).get_trace(*args, **kwargs)
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name not in guide_trace:
            if site["fn"].has_enumerate_support:
                continue  # summed out exactly by log_weight (stackvi.estimators.marginalize)
            raise ValueError(
                f"model latent site {_site_desc(site)} is not sampled by the guide: add it to "
                "the guide, observe it, or marginalize it."
            )
        gsite = guide_trace[name]
        expected = tuple(site["fn"].shape())
        got = tuple(jnp.shape(gsite["value"]))
        if gsite["infer"].get("_stackvi_owns_value"):
            # enumerate/mvd lay their values out along extra dims left of the plates.
            got, expected = _trailing(got, expected)
        if got != expected:
            raise ValueError(
                f"site '{name}': the guide's value has shape {got} ({type(gsite['fn']).__name__})"
                f" but the model's {type(site['fn']).__name__} has shape {expected} (batch "
                "shape + event shape, after plates). Make the guide site the same shape, e.g. "
                "put it in the same plates or use .to_event()."
            )
    for name, gsite in guide_trace.items():
        if gsite["type"] != "sample" or gsite["is_observed"]:
            continue
        if gsite["infer"].get("is_auxiliary"):
            continue
        if name not in model_trace:
            raise ValueError(
                f"guide site {_site_desc(gsite)} does not exist in the model: rename it to a "
                "model latent site or mark it infer={'is_auxiliary': True}."
            )
        if model_trace[name]["type"] == "sample" and model_trace[name]["is_observed"]:
            raise ValueError(f"guide samples site '{name}' which the model observes.")
    return model_trace


def _trailing(got: tuple, expected: tuple) -> tuple[tuple, tuple]:
    """Compare only dims both shapes have, 1s broadcasting (enumerated/branched values)."""
    n = min(len(got), len(expected))
    g, e = got[len(got) - n:], expected[len(expected) - n:]
    ok = all(a == b or a == 1 or b == 1 for a, b in zip(g, e, strict=True))
    return (e, e) if ok else (got, expected)


def _pool_shared_plates(nodes: list[Node], start: int, guide_trace: dict) -> None:
    """Give up plate-local learning signals where a later guide site may mix the elements.

    Element ``i`` of a plate sees only element ``i``'s costs, which is valid
    only if nothing downstream of it mixes elements. A guide site sampled
    later *outside* that plate (e.g. ``z ~ q(z | mean(b))``) may depend on every
    element, and then so may every cost of the plate: the node is summed over
    that plate axis (plain REINFORCE there; unbiased, less Rao-Blackwellized).
    """
    order = [n for n, s in guide_trace.items() if s["type"] == "sample" and not s["is_observed"]]
    plates = {n: {f.name for f in guide_trace[n]["cond_indep_stack"]} for n in order}
    for i in range(start, len(nodes)):
        node, term = nodes[i], nodes[i].log_prob
        if node.kind != "reinforce" or node.label not in plates:
            continue
        later = order[order.index(node.label) + 1:]
        own = plates[node.label]  # only plate axes (not enumerated/branch dims)
        pooled = {p for p in term.names if p in own and any(p not in plates[w] for w in later)}
        if pooled:
            axes = tuple(k for k, p in enumerate(term.names) if p in pooled)
            kept = tuple(p for p in term.names if p not in pooled)
            nodes[i] = node._replace(log_prob=Term(term.label, jnp.sum(term.array, axes), kept))


def log_weight(model: Callable, guide: Callable) -> Callable:
    """``(*args) -> Terms`` of ``log p(x, z) − log q(z)`` for one guide sample ``z``.

    Model latents with finite support that the guide does not sample are
    summed out exactly (:mod:`stackvi.estimators.marginalize`); guide sites
    under ``enumerate``/``mvd`` get their extra named dims from ``enum_scope``.
    """

    def run(*args, **kwargs):
        collector = _current_collector()
        start = len(collector) if collector is not None else 0
        with enum_scope(model, guide, args, kwargs):
            guide_trace = simulate(guide, *args, **kwargs)
            model_trace = score_model(model, guide_trace, *args, **kwargs)
            if collector is not None:
                # tell this sample's score-function nodes which terms cannot depend on them
                mark_upstream(collector, start, guide_trace, model_trace)
                _pool_shared_plates(collector, start, guide_trace)
            p = model_terms(model, model_trace, guide_trace, args, kwargs)
            return p - trace_terms(guide_trace, prefix="q:")

    return run


def surrogate(value: Terms | jax.Array, nodes: list[Node], state: dict | None = None):
    """``(value_scalar, surrogate_scalar, new_state)`` for a program's value and nodes.

    ``value`` may also be a :class:`~stackvi.estimators.signals.LearningSignal`
    (a scalar plus per-particle learning signals, e.g. VIMCO's).
    """
    if isinstance(value, (Terms, LearningSignal)):
        total = value.total()
    else:
        total = jnp.asarray(value)
        if total.ndim != 0:
            raise ValueError(
                f"an objective program must return Terms or a scalar, got shape {total.shape}; "
                "reduce it (sum/mean/logsumexp) first."
            )
    if needs_contraction(nodes):
        # enumerate / mvd sites: exact weights and extra branches (stackvi.estimators.contract)
        return exact_surrogate(value, nodes, state)
    sg = jax.lax.stop_gradient
    out = pathwise_total(value, nodes) if isinstance(value, Terms) else total
    new_state = {}
    for node in nodes:
        lp, names = node.log_prob.array, node.log_prob.names
        if isinstance(value, Terms):
            signal = jnp.broadcast_to(downstream(value, node).per(names), lp.shape)
        elif isinstance(value, LearningSignal):
            signal = value.for_node(names, lp.shape)
        else:
            signal = jnp.broadcast_to(total, lp.shape)
        signal = sg(signal)
        if node.baseline is not None:
            if node.baseline.needs_terms and not isinstance(value, Terms):
                # Every particle's signal is the same scalar, so the other particles'
                # mean *is* this particle's signal: silently biased, never allowed.
                # (A LearningSignal's per-particle signals, e.g. VIMCO's, already
                # depend on the other particles: averaging them would be biased too.)
                kind = "a LearningSignal" if isinstance(value, LearningSignal) else "a scalar"
                raise ValueError(
                    f"site '{node.label}': baseline {node.baseline!r} needs an objective "
                    "that returns Terms (independent per-particle costs, e.g. "
                    f"estimators.elbo(..., num_particles=K)), but this objective returns {kind}."
                    " Use baseline='ema' (MovingAverage) here instead."
                )
            st = (state or {}).get(node.label, node.baseline.init_state())
            # evaluate = __call__ plus, for learned baselines, their regression term
            b, new_state[node.label], fit_term = node.baseline.evaluate(signal, node, st)
            out = out + fit_term
            signal = signal - sg(b)
        out = out + jnp.sum((lp - sg(lp)) * signal)
    return total, out, new_state


# --------------------------------------------------------------------------- parameters

def _is_real(constraint) -> bool:
    return isinstance(constraint, type(constraints.real))


class _substitute_params(Messenger):
    """Answer every ``param`` site from ``params`` (unconstrained, the optimizer's space)."""

    def __init__(self, fn=None, params: dict | None = None):
        self.params = params or {}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "param":
            return
        name = msg["name"]
        if name not in self.params:
            raise KeyError(
                f"param site '{name}' is not in the params dict: create params with "
                "objective.init(rng_key, *args) using the same model, guide and arguments."
            )
        constraint = msg["kwargs"].get("constraint", constraints.real)
        value = self.params[name]
        msg["value"] = value if _is_real(constraint) else biject_to(constraint)(value)


def _unconstrain(site: dict):
    constraint = site["kwargs"].get("constraint", constraints.real)
    value = site["value"]
    return value if _is_real(constraint) else biject_to(constraint).inv(value)


# --------------------------------------------------------------------------- the objective

@dataclass(frozen=True)
class Objective:
    """A variational objective (higher is better) and its gradient estimator.

    ``program(*args, **kwargs)`` returns ``Terms`` or a scalar; ``model`` and
    ``guide`` are used to create parameters. See the module docstring.
    """

    program: Callable[..., Any]
    model: Callable
    guide: Callable
    name: str = "objective"
    info: dict = field(default_factory=dict)

    # -- parameters
    def _param_sites(self, rng_key, args, kwargs) -> dict:
        k1, k2 = random.split(rng_key)
        guide_trace = trace(seed(self.guide, k1)).get_trace(*args, **kwargs)
        model_trace = trace(seed(replay(self.model, guide_trace), k2)).get_trace(*args, **kwargs)
        sites = {n: s for n, s in guide_trace.items() if s["type"] == "param"}
        sites.update({n: s for n, s in model_trace.items() if s["type"] == "param"})
        return sites

    def init(self, rng_key, *args, **kwargs) -> dict:
        """Initial parameters of model and guide, unconstrained (the optimizer's space)."""
        sites = self._param_sites(rng_key, args, kwargs)
        return jax.tree_util.tree_map(jnp.asarray, {n: _unconstrain(s) for n, s in sites.items()})

    def constrain(self, params: dict, *args, **kwargs) -> dict:
        """Parameters in their constrained space (what the model and guide see)."""
        with _substitute_params(params=params):
            sites = self._param_sites(random.PRNGKey(0), args, kwargs)
        return {n: s["value"] for n, s in sites.items()}

    # -- running the program
    def run(self, params, rng_key, *args, **kwargs):
        """``(value, nodes)``: the program's raw value and its score-function nodes."""
        with _substitute_params(params=params), collect_nodes() as nodes:
            value = seed(self.program, rng_key)(*args, **kwargs)
        return value, _unique_labels(nodes)

    def estimate(self, params, rng_key, *args, **kwargs) -> jax.Array:
        """A Monte Carlo estimate of the objective."""
        value, nodes = self.run(params, rng_key, *args, **kwargs)
        if needs_contraction(nodes):
            return expected_total(value, nodes)
        return value.total() if isinstance(value, (Terms, LearningSignal)) else jnp.asarray(value)

    def init_state(self, params, rng_key, *args, **kwargs) -> dict:
        """Initial state of the baselines (empty when no site has a stateful baseline)."""
        _, nodes = jax.eval_shape(lambda p, k: self.run(p, k, *args, **kwargs), params, rng_key)
        return {n.label: n.baseline.init_state() for n in nodes if n.baseline is not None}

    def value_and_grad_with_state(self, params, state, rng_key, *args, **kwargs):
        """``(value, grads, new_state)``: like ``value_and_grad``, threading baseline state."""

        def f(p):
            value, nodes = self.run(p, rng_key, *args, **kwargs)
            total, sur, new_state = surrogate(value, nodes, state)
            return sur, (total, new_state)

        (_, (total, new_state)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return total, grads, new_state

    def value_and_grad(self, params, rng_key, *args, **kwargs):
        """``(value, grads)``: the estimate and an unbiased estimate of its gradient."""
        value, grads, _ = self.value_and_grad_with_state(params, None, rng_key, *args, **kwargs)
        return value, grads

    def diagnose(self, params, rng_key, *args, **kwargs) -> dict[str, float]:
        """Per-term totals of one estimate (eager); non-finite ones point at the culprit site."""
        value, _ = self.run(params, rng_key, *args, **kwargs)
        if isinstance(value, LearningSignal):
            value = value.total()
        if not isinstance(value, Terms):
            return {self.name: float(value)}
        return {t.label: float(jnp.sum(t.array)) for t in value.terms}

    def check_finite(self, params, rng_key, *args, **kwargs) -> jax.Array:
        """The estimate, or a :class:`NonFiniteError` naming the non-finite sites."""
        value = self.estimate(params, rng_key, *args, **kwargs)
        if not bool(jnp.isfinite(value)):
            raise NonFiniteError(non_finite_message(self, params, rng_key, args, kwargs))
        return value


def non_finite_message(obj: Objective, params, rng_key, args, kwargs) -> str:
    bad_params = [n for n, v in params.items()
                  if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(v))]
    msg = f"{obj.name} is not finite."
    try:
        terms = obj.diagnose(params, rng_key, *args, **kwargs)
    except Exception as err:  # e.g. a distribution's argument validation on NaN params
        terms = {}
        msg += f" Re-running it eagerly raised {type(err).__name__}: {err}."
    bad = {k: v for k, v in terms.items() if not jnp.isfinite(v)}
    if bad:
        msg += " Non-finite log-density terms (p: model, q: guide): " + ", ".join(
            f"{k} = {v}" for k, v in bad.items()
        )
        msg += (". Check that the guide's support matches the model's at these sites and "
                "that their parameters are valid.")
    if bad_params:
        msg += f" Non-finite parameters: {bad_params} (lower the learning rate?)."
    return msg


def _unique_labels(nodes: list[Node]) -> list[Node]:
    seen: dict[str, int] = {}
    out = []
    for n in nodes:
        seen[n.label] = seen.get(n.label, 0) + 1
        label = n.label if seen[n.label] == 1 else f"{n.label}#{seen[n.label]}"
        out.append(n._replace(label=label))
    return out
