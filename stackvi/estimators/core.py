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

import warnings
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from jax import random
from numpyro.distributions import biject_to, constraints
from numpyro.handlers import replay, seed, trace
from numpyro.primitives import Messenger

from stackvi._compat import failing_site
from stackvi.axes import PARTICLES
from stackvi.estimators.signals import LearningSignal
from stackvi.gradients import rerun
from stackvi.gradients.dataflow import Flow, analyse, is_tagging, probe
from stackvi.gradients.dice import any_order_surrogate
from stackvi.gradients.records import SiteRecord, current_recorder, recording
from stackvi.gradients.scoring import model_density, score_model
from stackvi.gradients.strategy import dist_name, simulate
from stackvi.gradients.structure import apply_pooling
from stackvi.gradients.surrogate import estimate as _estimate
from stackvi.gradients.surrogate import scalar_value, surrogate
from stackvi.handlers.density import trace_terms
from stackvi.handlers.enumerate import enum_scope
from stackvi.sharding import constrain_particles
from stackvi.terms import Terms

__all__ = [
    "Objective",
    "particles",
    "score_model",
    "log_weight",
    "surrogate",
    "NonFiniteError",
    "PARTICLES",
    "MUTABLE",
    "isolate_mutable",
    "substitute_params",
]


# The key of the ``numpyro.mutable`` values in an objective's state (next to the
# baselines' states, which are keyed by site).
MUTABLE = "numpyro.mutable"


def _mutable_of(state):
    return None if state is None else state.get(MUTABLE)


class NonFiniteError(FloatingPointError):
    """The objective is not finite; the message names the offending sites."""


# --------------------------------------------------------------------------- building blocks

def particles(fn: Callable, num: int, axis=PARTICLES) -> Callable:
    """Run ``fn`` ``num`` times independently, vectorized with ``jax.vmap``.

    Outputs gain a leading axis; :class:`Terms` outputs and the records of the
    sites drawn inside get it as a named independence axis ``axis`` (default
    :data:`PARTICLES`, which no plate name can equal). Needs a ``seed`` in
    context (objectives provide one).
    """
    num = _count(num, "particles", "number of particles")

    def run(*args, **kwargs):
        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError("particles() needs a random key: run it under numpyro.handlers.seed")

        # One minibatch for all particles: a subsampled plate draws its indices
        # from a key shared by the particles (else IWAE-style bounds would mix
        # different minibatches inside one logsumexp).
        plate_key = numpyro.prng_key()

        def one(k, index):
            inner = fn if num == 1 else isolate_mutable(fn)
            with recording() as rec, rerun.particle(axis, index):
                out = seed(_shared_subsample(inner, rng_key=plate_key), k)(*args, **kwargs)
            return out, tuple(rec.records)

        # Under stackvi.sharding.sharded_particles the particles split over devices.
        keys = constrain_particles(random.split(key, num))
        if num == 1:
            # Same key and result as vmap over one particle, without the batch axis
            # inside: vmap's axis makes XLA materialize transposed copies of every
            # activation gradient (+60% per step on the 784-200-10 VAE, batch 1024).
            out, nodes = jax.tree_util.tree_map(lambda a: jnp.expand_dims(a, 0),
                                                one(keys[0], 0))
        else:
            out, nodes = jax.vmap(one)(keys, jnp.arange(num))
        parent = current_recorder()
        if parent is not None:
            parent.extend(n.with_axis(axis) for n in nodes)
        if not isinstance(out, Terms):
            return out
        out = out.with_axis(axis)
        for t in out.terms:  # what a nonlinear bound reads per particle: checked by data flow
            probe(t.array, t.names, t.label, model_too=False)
        return out

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


def _count(num, who: str, what: str) -> int:
    """A positive int (NumPy integers too), or a clear error (``True`` is not a count)."""
    import numbers

    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
        raise ValueError(f"{who}: {what} must be a positive int, got {num!r}.")
    return int(num)


def log_weight(model: Callable, guide: Callable) -> Callable:
    """``(*args) -> Terms`` of ``log p(x, z) − log q(z)`` for one guide sample ``z``.

    Model latents with finite support that the guide does not sample are
    summed out exactly (:func:`~stackvi.gradients.scoring.model_density`);
    guide sites under ``enumerate``/``mvd`` get their extra named dims from
    ``enum_scope``.
    """

    def run(*args, **kwargs):
        with enum_scope(model, guide, args, kwargs):
            guide_trace = simulate(guide, *args, **kwargs)
            return (model_density(model, guide_trace, *args, **kwargs)
                    - trace_terms(guide_trace, prefix="q:"))

    return run


# --------------------------------------------------------------------------- parameters

def _is_real(constraint) -> bool:
    return isinstance(constraint, type(constraints.real))


class substitute_params(Messenger):
    """Answer every ``param`` site from ``params`` (unconstrained, the optimizer's space).

    ``numpyro.mutable`` sites (e.g. a flax BatchNorm's ``batch_stats``) are answered
    from ``mutable`` — a fresh copy per message, so a model run twice updates the
    state once — and the copies (updated in place by the model) are kept in
    ``mutable_out``: the last one of each site is the new state, as in NumPyro's SVI.
    """

    def __init__(self, fn=None, params: dict | None = None, mutable: dict | None = None):
        self.params = params or {}
        self.mutable = mutable
        self.mutable_out: dict = {}
        self.used: set[str] = set()
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "mutable":
            self._mutable(msg)
            return
        if msg["type"] != "param":
            return
        name = msg["name"]
        self.used.add(name)
        if name not in self.params:
            raise KeyError(
                f"param site '{name}' is not in the params dict: create params with "
                "objective.init(rng_key, *args) using the same model, guide and arguments."
            )
        constraint = msg["kwargs"].get("constraint", constraints.real)
        value = self.params[name]
        msg["value"] = value if _is_real(constraint) else biject_to(constraint)(value)

    def _mutable(self, msg):
        name = msg["name"]
        if self.mutable is not None and name in self.mutable:
            value = jax.lax.stop_gradient(self.mutable[name])
            msg["value"] = dict(value) if isinstance(value, dict) else value
        elif msg["value"] is None:
            raise ValueError(
                f"numpyro.mutable site '{name}' has no state: thread it through "
                "objective.value_and_grad_with_state / estimate_with_state with "
                "state = objective.init_state(params, rng_key, *args) (stackvi.fit does this)."
            )
        self.mutable_out[name] = msg["value"]


class isolate_mutable(Messenger):
    """Give the program a private copy of every ``numpyro.mutable`` dict (updates dropped).

    ``particles`` uses it for K > 1: K vectorized copies cannot all be the new
    state (NumPyro's SVI ignores mutable state with several particles, too).
    """

    def postprocess_message(self, msg):  # after the outer handlers answered the site
        if msg["type"] == "mutable" and isinstance(msg["value"], dict):
            warnings.warn(f"numpyro.mutable site '{msg['name']}' is not updated with several "
                          "particles (as in NumPyro's SVI); use num_particles=1 to update it",
                          stacklevel=2)
            msg["value"] = dict(msg["value"])


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
    #: abstract signature of the inputs -> the program's data-flow analysis
    #: (``gradients.dataflow.analyse``): it traces the program again, once per signature
    _flow: dict = field(default_factory=dict, repr=False, compare=False)

    # -- parameters
    def _param_sites(self, rng_key, args, kwargs, kind: str = "param") -> dict:
        k1, k2 = random.split(rng_key)
        with _naming_sites():
            guide_trace = trace(seed(self.guide, k1)).get_trace(*args, **kwargs)
            model_trace = trace(seed(replay(self.model, guide_trace), k2)).get_trace(
                *args, **kwargs)
        sites = {n: s for n, s in guide_trace.items() if s["type"] == kind}
        sites.update({n: s for n, s in model_trace.items() if s["type"] == kind})
        return sites

    def init(self, rng_key, *args, **kwargs) -> dict:
        """Initial parameters of model and guide, unconstrained (the optimizer's space)."""
        sites = self._param_sites(rng_key, args, kwargs)
        return jax.tree_util.tree_map(jnp.asarray, {n: _unconstrain(s) for n, s in sites.items()})

    def constrain(self, params: dict, *args, **kwargs) -> dict:
        """Parameters in their constrained space (what the model and guide see)."""
        out = {}
        for name, constraint in self._param_constraints(args, kwargs).items():
            if name not in params:
                raise KeyError(f"param site '{name}' is not in the params dict: create params "
                               "with objective.init(rng_key, *args) using the same model, guide "
                               "and arguments.")
            out[name] = params[name] if _is_real(constraint) else biject_to(constraint)(
                params[name])
        return out

    def _param_constraints(self, args, kwargs) -> dict:
        """Each param site's constraint, read off an abstract run of model and guide (an
        eager run would dispatch, and compile, the model's every operation); eagerly only
        when a constraint depends on a random draw (it then holds a traced value)."""
        found: dict = {}

        def read(key):
            found.update({n: s["kwargs"].get("constraint", constraints.real)
                          for n, s in self._param_sites(key, args, kwargs).items()})
            return 0

        jax.eval_shape(read, random.PRNGKey(0))
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(found)):
            read(random.PRNGKey(0))  # eagerly: concrete constraints replace the traced ones
        return found

    def init_mutable(self, rng_key, *args, **kwargs) -> dict:
        """Initial values of the ``numpyro.mutable`` sites (empty when there are none)."""
        names: list = []

        def probe(key):  # traced only: no eager run (and compilation) for the usual model
            names.extend(self._param_sites(key, args, kwargs, kind="mutable"))
            return 0

        jax.eval_shape(probe, rng_key)
        if not names:
            return {}
        sites = self._param_sites(rng_key, args, kwargs, kind="mutable")
        return {n: s["value"] for n, s in sites.items() if s["value"] is not None}

    # -- running the program
    def __post_init__(self):
        for role in ("model", "guide"):
            fn = getattr(self, role)
            if not callable(fn):
                raise ValueError(
                    f"{self.name}: {role} must be a function (a NumPyro model/guide), got "
                    f"{fn!r}. A model without latent sites still needs a guide: use "
                    "`lambda *args, **kwargs: None`."
                )

    def run(self, params, rng_key, *args, **kwargs):
        """``(value, records)``: the program's raw value and the records of its sites."""
        value, records, _ = self._run(params, rng_key, args, kwargs)
        return value, records

    def _run(self, params, rng_key, args, kwargs, mutable=None):
        if not isinstance(params, dict):
            raise TypeError(f"{self.name}: params must be the dict from objective.init(...), "
                            f"got {type(params).__name__}.")
        subs = substitute_params(params=params, mutable=mutable)
        with subs, recording() as rec, rerun.session():
            with _naming_sites():
                value = seed(self.program, rng_key)(*args, **kwargs)
        if not isinstance(value, Terms) and any(r.kind == "enumerate" for r in rec.records):
            # A nonlinear value: enumeration is differentiated by continuation instead
            # (gradients/rerun.py); the program is run again knowing that (the first run
            # is dead code under jit).
            subs = substitute_params(params=params, mutable=mutable)
            with subs, recording() as rec, rerun.session(nonlinear=True):
                with _naming_sites():
                    value = seed(self.program, rng_key)(*args, **kwargs)
        if not isinstance(value, (Terms, LearningSignal)):
            scalar_value(value)  # a program's value is checked before anything it leaves unused
        unknown = sorted(set(params) - subs.used)
        if unknown:
            raise ValueError(
                f"{self.name}: params has entries {unknown} that no param site of the model or "
                f"guide uses (sites used: {sorted(subs.used)}); create params with "
                "objective.init(rng_key, *args) for this model and guide."
            )
        new_mutable = None
        if mutable is not None:
            new_mutable = {**mutable, **subs.mutable_out}
        records = _unique_names(rec.records)
        if not is_tagging():  # (the analysis' own trace of the program is not analysed again)
            records = apply_pooling(self._analysed(value, records, rec.sums_out, params,
                                                   rng_key, args, kwargs, mutable))
        return value, records, new_mutable

    def _rerun(self, params, rng_key, args, kwargs, mutable, target, nonlinear):
        """The program again with the same key and ``target``'s site substituted
        (:mod:`stackvi.gradients.rerun`): ``(value, records)``."""
        with substitute_params(params=params, mutable=mutable), recording() as rec:
            with rerun.session(target, nonlinear):
                value = seed(self.program, rng_key)(*args, **kwargs)
        return value, rec.records

    def _analysed(self, value, records, sums_out, params, rng_key, args, kwargs, mutable):
        """``records`` with what the program's data flow shows (``gradients.dataflow``):
        laid-out axes checked, and the terms a score-function sample cannot reach added to
        its ``upstream``. The program is traced once more, once per abstract signature."""
        laid_out = sums_out or any(r.axis is not None or rerun.is_continuation(r)
                                   for r in records)
        scored = isinstance(value, Terms) and any(r.axis is None for r in records)
        if not (laid_out or scored):
            return records
        found = self._flow_of(params, rng_key, args, kwargs, mutable)
        if not isinstance(value, Terms) or (found.num_terms, len(found.unreached)) != (
                len(value.terms), len(records)):
            return records  # not traced, or not the same structure: program order only
        terms = value.terms
        out = []
        for record, unreached, pooled in zip(records, found.unreached, found.pooled,
                                             strict=True):
            if unreached:
                keys = {terms[i].source for i in unreached if terms[i].source is not None}
                record = record._replace(upstream=record.upstream | frozenset(keys))
            if pooled is not None:
                record = record._replace(pooled=pooled)
            out.append(record)
        return out

    def _flow_of(self, params, rng_key, args, kwargs, mutable) -> Flow:
        """``gradients.dataflow.analyse`` of the program, once per abstract signature."""
        signature = _signature((params, rng_key, args, kwargs, mutable))
        found = self._flow.get(signature) if signature is not None else None
        if found is None:
            found = analyse(lambda p, k: self._run(p, k, args, kwargs, mutable)[:2], params,
                            rng_key)
            if signature is not None:
                self._flow[signature] = found
        return found

    def estimate(self, params, rng_key, *args, **kwargs) -> jax.Array:
        """A Monte Carlo estimate of the objective."""
        value, records = self.run(params, rng_key, *args, **kwargs)
        return _estimate(value, records)

    def estimate_with_state(self, params, state, rng_key, *args, **kwargs) -> jax.Array:
        """Like ``estimate``, with the ``numpyro.mutable`` values held in ``state`` (from
        ``init_state`` or a fit); the updates the program makes to them are dropped."""
        value, records, _ = self._run(params, rng_key, args, kwargs, _mutable_of(state))
        return _estimate(value, records)

    def init_state(self, params, rng_key, *args, **kwargs) -> dict:
        """Initial state: of the baselines (by record name) and, under the key
        :data:`MUTABLE`, the values of ``numpyro.mutable`` sites; empty when neither exists."""
        mutable = self.init_mutable(rng_key, *args, **kwargs) or None
        # The data-flow analysis traces the program anyway (and is cached for the first
        # real trace): its records name the baselines, so no separate abstract run is needed.
        baselines = self._flow_of(params, rng_key, args, kwargs, mutable).baselines
        if baselines is None:  # the program could not be traced for the analysis
            _, records, _ = jax.eval_shape(
                lambda p, k: self._run(p, k, args, kwargs, mutable), params, rng_key)
            baselines = [(r.name, r.baseline) for r in records]
        state = {name: b.init_state() for name, b in baselines if b is not None}
        if mutable:
            state[MUTABLE] = jax.tree_util.tree_map(jnp.asarray, mutable)
        return state

    def value_and_grad_with_state(self, params, state, rng_key, *args, **kwargs):
        """``(value, grads, new_state)``: like ``value_and_grad``, threading baseline state
        and ``numpyro.mutable`` values (``state[MUTABLE]``, updated as NumPyro's SVI does)."""
        mutable = _mutable_of(state)
        baseline_state = ({k: v for k, v in state.items() if k != MUTABLE}
                          if state is not None else None)
        variance: set = set()  # params a record trains on the estimator's variance

        def f(p):
            value, records, new_mutable = self._run(p, rng_key, args, kwargs, mutable)
            records = rerun.attach(
                lambda q, target, nonlinear: self._rerun(q, rng_key, args, kwargs, mutable,
                                                         target, nonlinear),
                value, records, p)
            variance.update(n for r in records for n in r.variance_params)
            total, sur, new_state = surrogate(value, records, baseline_state)
            if new_mutable is not None:
                new_state = {**new_state, MUTABLE: jax.lax.stop_gradient(new_mutable)}
            return sur, (total, new_state)

        (_, (total, new_state)), grads = jax.value_and_grad(f, has_aux=True)(params)
        if variance:
            return _variance_step(f, params, variance)
        return total, grads, new_state

    def value_and_grad(self, params, rng_key, *args, **kwargs):
        """``(value, grads)``: the estimate and an unbiased estimate of its gradient.

        Params that a strategy trains on the estimator's variance
        (``SiteRecord.variance_params``: ``relax``'s control variate) get ``−∇‖ĝ‖²``
        instead, ``ĝ`` the estimate for the other params (see ``_variance_step``)."""
        value, grads, _ = self.value_and_grad_with_state(params, None, rng_key, *args, **kwargs)
        return value, grads

    def surrogate(self, params, rng_key, *args, **kwargs) -> jax.Array:
        """A scalar whose derivatives of *every* order in ``params`` are unbiased estimates
        of the objective's: ``jax.hessian(objective.surrogate)(params, key, x)``,
        Hessian-vector products, ``jax.grad(jax.grad(...))``.

        The DiCE form of the estimator (:mod:`stackvi.gradients.dice`): sites under
        ``reinforce`` (with any baseline) or ``enumerate``, and pathwise sites; a site
        whose strategy gives first derivatives only (``mvd``, ``disarm``) is an error.
        Its value is not the objective's (use ``estimate``); baseline state is fresh.
        """
        value, records = self.run(params, rng_key, *args, **kwargs)
        state = None
        if any(r.baseline is not None for r in records):
            state = {r.name: r.baseline.init_state() for r in records if r.baseline is not None}
        return any_order_surrogate(value, records, state)[1]

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


_PLAIN_ERRORS = (ValueError, TypeError, IndexError, AssertionError)


@contextmanager
def _naming_sites():
    """A plain error NumPyro raises while it processes a site (a plate's shape or dim check,
    a distribution's broadcasting) is re-raised naming that site (and keeps it as cause)."""
    try:
        yield
    except _PLAIN_ERRORS as err:
        named = _naming_site(err)
        if named is err:
            raise
        raise named from err


def _naming_site(err: Exception) -> Exception:
    msg = failing_site(err)
    if type(err) not in _PLAIN_ERRORS or msg is None:
        return err
    name = msg.get("name")
    if f"'{name}'" in str(err):
        return err
    what = msg.get("type", "sample")
    if what == "sample" and msg.get("fn") is not None:
        what = f"sample site '{name}' ({dist_name(msg)})"
    else:
        what = f"{what} '{name}'"
    detail = str(err) or "NumPyro's own check failed (an assertion without a message)"
    return type(err)(f"{what}: {detail}; check its shape against its plates (plate sizes, "
                     "dims, .to_event()).")


def _signature(inputs):
    """Hashable shapes, dtypes and static values of ``inputs`` (``None``: unhashable)."""
    leaves, tree = jax.tree_util.tree_flatten(inputs)
    key = [tree]
    for leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            key.append((tuple(leaf.shape), str(leaf.dtype)))
        else:
            key.append(leaf)
    try:
        hash(tuple(key))
    except TypeError:
        return None
    return tuple(key)


def _variance_step(f, params: dict, variance: set):
    """``(value, grads, state)`` when some records declare ``variance_params`` (``relax``'s
    control variate): those params get ``−∇_φ ‖ĝ‖²``, ``ĝ`` the surrogate's gradient in
    every other param (whose entries are unchanged), so an ascent step on the objective is
    a descent step on the estimator's variance (``E ĝ`` does not depend on ``φ``). One
    more differentiation of the program (reverse over reverse); under ``jit`` the first
    pass, which only found the names, is dead code.
    """
    phi = {k: v for k, v in params.items() if k in variance}
    rest = {k: v for k, v in params.items() if k not in variance}

    def estimator(phi):
        (_, aux), g = jax.value_and_grad(f, has_aux=True)({**rest, **phi})
        return {k: g[k] for k in rest}, aux

    g_rest, pullback, (total, new_state) = jax.vjp(estimator, phi, has_aux=True)
    (g_phi,) = pullback(jax.tree_util.tree_map(lambda g: -2.0 * g, g_rest))
    return total, {**g_rest, **g_phi}, new_state


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


def _unique_names(records: list[SiteRecord]) -> list[SiteRecord]:
    """Records of a site drawn several times (two guides) stay apart (baseline state)."""
    seen: dict[str, int] = {}
    out = []
    for r in records:
        seen[r.name] = seen.get(r.name, 0) + 1
        name = r.name if seen[r.name] == 1 else f"{r.name}#{seen[r.name]}"
        out.append(r._replace(name=name))
    return out
