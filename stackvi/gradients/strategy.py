"""The extension API: a gradient strategy is one class that claims sites and owns its rule.

A :class:`Strategy` is both

* a **handler** (a NumPyro ``Messenger``): wrapping a guide with it, or using
  it as a context manager, *claims* latent sites (``sites=[...]``, a
  predicate, or every site). Claims are made in ``process_message``, which
  runs innermost-first, so **the innermost claim wins**; and
* the **rule** for the sites it claims, as static/class methods:

  - ``validate(msg, claimer)`` — refuse a site it cannot handle (clear error);
  - ``prepare(msg)`` — set the value *before* sampling (enumerated supports,
    branches), when the claim is made;
  - ``transform(msg)`` — change the sampled value (``stop_gradient``), in the
    outermost handler of :func:`simulate`;
  - ``record(msg)`` — the :class:`~stackvi.gradients.records.SiteRecord` of
    the sampled site (``None`` for pathwise sites, whose gradient flows
    through the value);
  - ``gradient(record, ctx)`` — the site's term of the surrogate, given the
    estimator's :class:`~stackvi.gradients.surrogate.Signals` ``ctx`` (learning
    signals by plate, costs on branches).

:func:`register` makes a new strategy known by name (for ``strategies``,
``configure`` and ``infer={"strategy": name}``); a record whose ``kind`` is
not registered is an error, never REINFORCE by default.
``docs/strategies.md`` writes one (DisARM) in a single file.

Sites nobody claims get the default when :func:`simulate` runs: pathwise when
the distribution has a reparameterized sampler, else ``reinforce`` — never a
silently dropped score term.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.handlers import trace
from numpyro.primitives import Messenger

from stackvi.gradients.dataflow import score_axis, tag
from stackvi.gradients.records import SiteRecord, current_recorder

__all__ = ["Strategy", "register", "STRATEGIES", "simulate", "claim", "dist_name", "unwrapped",
           "bernoulli_base", "is_latent", "Trace", "numbered"]

SiteSelector = Iterable[str] | Callable[[dict], bool] | None

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Make ``cls`` known by ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"strategy class {cls.__name__} needs a non-empty `name`")
    STRATEGIES[cls.name] = cls
    return cls


def lookup(name: str, site: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ValueError(
            f"site '{site}' asks for unknown strategy {name!r}; known: {sorted(STRATEGIES)}"
        )
    return STRATEGIES[name]


def is_latent(msg: dict) -> bool:
    return msg["type"] == "sample" and not msg["is_observed"]


def unwrapped(fn):
    """The distribution under NumPyro's expand/mask/to_event wrappers.

    >>> import numpyro.distributions as dist
    >>> type(unwrapped(dist.Bernoulli(logits=0.0).expand([3]).mask(False).to_event(1)))
    <class 'numpyro.distributions.discrete.BernoulliLogits'>
    """
    while type(fn).__name__ in ("ExpandedDistribution", "MaskedDistribution", "Independent"):
        fn = fn.base_dist
    return fn


def bernoulli_base(fn):
    """The Bernoulli under ``fn``'s wrappers (logits or probs form), else ``None``."""
    base = unwrapped(fn)
    return base if isinstance(base, (dist.BernoulliLogits, dist.BernoulliProbs)) else None


def dist_name(msg: dict) -> str:
    """The distribution's name, looking through NumPyro's expand/mask/to_event wrappers."""
    return type(unwrapped(msg["fn"])).__name__


def require_family(found, msg: dict, claimer: str, strategy: str, family: str, *,
                   why: str = "", instead: str = "mvd, enumerate or reinforce") -> None:
    """Refuse a site outside the family ``strategy`` handles (``found`` is falsy).

    The error names the claimer, the site, its distribution (through NumPyro's
    wrappers), the family and what to use instead; ``why`` (``" (…)"``) says why.

    >>> import numpyro.distributions as dist
    >>> msg = {"name": "x", "fn": dist.Normal(0.0, 1.0).expand([3]).to_event(1)}
    >>> require_family(None, msg, "configure", "disarm", "Bernoulli")
    Traceback (most recent call last):
    ValueError: configure: site 'x' (Normal) is not a Bernoulli; disarm handles Bernoulli \
sites only. Use mvd, enumerate or reinforce for it.
    """
    if not found:
        raise ValueError(
            f"{claimer}: site '{msg['name']}' ({dist_name(msg)}) is not a {family}; {strategy} "
            f"handles {family} sites only{why}. Use {instead} for it.")


def claim(msg: dict, name: str, options: dict, claimer: str) -> None:
    """Record ``name`` as the site's strategy unless an inner handler already did."""
    if "strategy" in msg["infer"]:
        return
    cls = lookup(name, msg["name"])
    # Copy: a user may pass one ``infer`` dict object to many sites.
    msg["infer"] = {**msg["infer"], "strategy": name, **options}
    cls.validate(msg, claimer)
    cls.prepare(msg)
    msg["infer"]["_stackvi_prepared"] = True


def wrap_scan_body(msg: dict, wrap: Callable[[Callable], Callable]) -> None:
    """Run NumPyro ``scan``'s body under ``wrap`` too (its sites never pass our handlers)."""
    if msg["type"] == "control_flow" and msg["fn"].__name__ == "scan_wrapper":
        body, *rest = msg["args"]
        msg["args"] = (wrap(body), *rest)


class Strategy(Messenger):
    """Base class of gradient strategies (see the module docstring)."""

    name: str = ""

    def __init__(self, fn=None, sites: SiteSelector = None, **options: Any):
        if isinstance(sites, str):
            sites = [sites]
        if sites is not None and not callable(sites):
            sites = frozenset(sites)
        self.sites = sites
        self.options = options
        self.check_names = True
        self._seen: set[str] = set()
        super().__init__(fn)

    def selects(self, msg: dict) -> bool:
        if self.sites is None:
            return True
        if callable(self.sites):
            return bool(self.sites(msg))
        return msg["name"] in self.sites

    def process_message(self, msg):
        if is_latent(msg):
            self._seen.add(msg["name"])
            if self.selects(msg):
                claim(msg, self.name, self.options, type(self).__name__)
        wrap_scan_body(msg, self._inside)

    def _inside(self, body):
        inner = copy.copy(self)
        inner.fn, inner.check_names, inner._seen = body, False, set()
        return inner

    def __enter__(self):
        self._seen = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        out = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.check_names and isinstance(self.sites, frozenset):
            check_named_sites(type(self).__name__, self.sites, self._seen)
        return out

    # -- the rule (override what applies) ------------------------------------
    @staticmethod
    def validate(msg: dict, claimer: str) -> None:
        pass

    @staticmethod
    def prepare(msg: dict) -> None:
        pass

    @staticmethod
    def transform(msg: dict) -> None:
        pass

    @classmethod
    def record(cls, msg: dict) -> SiteRecord | None:
        return None

    @classmethod
    def gradient(cls, record: SiteRecord, ctx) -> Any:
        return jnp.zeros(())

    @classmethod
    def gradients(cls, records: list[SiteRecord], ctx) -> Any:
        """The terms of all of this strategy's records (override to vectorize them)."""
        out = jnp.zeros(())
        for record in records:
            out = out + cls.gradient(record, ctx)
        return out

    # Whether the strategy lays values out along an axis of its own (enumerate, mvd):
    # such sites need the dims an objective hands out, and a linear (Terms) objective.
    owns_value: bool = False
    # Whether the site's own log q term enters the pathwise value detached (score-function
    # rules: E[∇ log q(z)] = 0 there, so dropping it lowers variance; see surrogate).
    detach_own_term: bool = False
    # How the DiCE-form surrogate (stackvi.gradients.dice) treats the site for derivatives
    # of every order: "score" (magic-box factors), "exact" (enumeration weights keep their
    # derivatives), or None: first derivatives only (objective.surrogate is an error).
    higher_order: str | None = None


def check_named_sites(claimer: str, named, seen: set) -> None:
    """A site named in a claim that the program never drew is a typo: say so."""
    missing = sorted(set(named) - seen)
    if missing:
        raise ValueError(
            f"{claimer}: site(s) {missing} never appear among the latent sample sites of the "
            f"program it wraps (those are {sorted(seen)}); check the names."
        )


class Trace(dict):
    """A NumPyro trace (an ordered ``dict`` of sites) numbered for the estimator.

    ``token`` identifies it among the traces of one objective run, so the
    log-density terms taken from it (``trace_terms``) can be matched to the
    records of its sites.
    """

    token: int | None = None


def numbered(tr: dict, token: int | None = None) -> Trace:
    """``tr`` as a :class:`Trace` with ``token`` (a fresh one from the recorder by default)."""
    out = Trace(tr)
    if token is None:
        rec = current_recorder()
        token = rec.token() if rec is not None else None
    out.token = token
    return out


class _resolve(Messenger):
    """Outermost handler of :func:`simulate`: default claims, each strategy's transform, records.

    It must be outermost: ``postprocess_message`` runs outermost-first, so the
    transformed value is what every inner handler (``trace``) records and what
    the program's next line sees. The default is claimed in
    ``postprocess_message``: strategy handlers used as context managers
    *around* ``simulate`` are outer to us, and their claims arrive after our
    ``process_message``. Inside a NumPyro ``scan`` body (``in_scan``) the
    default is claimed in ``process_message`` instead — every handler of the
    body is inside us there — and nothing is recorded: the sites come back out
    of the scan stacked over time, and are recorded then.
    """

    def __init__(self, fn=None, in_scan: bool = False, token: int | None = None):
        self.in_scan = in_scan
        self.token = token
        super().__init__(fn)

    def process_message(self, msg):
        wrap_scan_body(msg, lambda body: _resolve(body, in_scan=True))
        if not is_latent(msg):
            return
        if msg.get("_control_flow_done"):
            # A site coming back out of a scan (stacked over time), claimed inside it.
            if msg["infer"].get("_stackvi_sampled"):
                msg["infer"] = {**msg["infer"], "_stackvi_from_scan": True}
            return
        if msg["value"] is not None and not msg["infer"].get("_stackvi_owns_value"):
            return  # replayed / substituted: not sampled here
        msg["infer"] = {**msg["infer"], "_stackvi_sampled": True}
        if self.in_scan:
            msg["infer"]["_stackvi_in_scan"] = True
        # Claims written in the site's infer dict never pass through claim().
        if "strategy" not in msg["infer"] and msg["infer"].get("enumerate") == "parallel":
            claim(msg, "enumerate", {}, "infer={'enumerate': 'parallel'}")
        elif ("strategy" in msg["infer"] and msg["value"] is None
              and not msg["infer"].get("_stackvi_prepared")):
            cls = lookup(msg["infer"]["strategy"], msg["name"])
            if getattr(msg["infer"].get("baseline"), "trained", False):
                # Objective.init never runs _resolve, so it would not see the params.
                raise ValueError(
                    f"site '{msg['name']}': a trained baseline ({msg['infer']['baseline']!r}) "
                    "in the site's infer dict; attach it with a handler instead: "
                    "reinforce(guide, sites=[...], baseline=...), strategies or configure."
                )
            cls.prepare(msg)
        if self.in_scan:
            self._claim_default(msg)
            cls = STRATEGIES[msg["infer"]["strategy"]]
            if cls.owns_value or msg["infer"]["strategy"] not in ("reparam", "reinforce"):
                raise NotImplementedError(
                    f"site '{msg['name']}' ({dist_name(msg)}) inside a NumPyro scan is claimed by "
                    f"'{msg['infer']['strategy']}'; inside scan only reparam and reinforce are "
                    "supported. Claim reinforce for it, or sum it out in the model "
                    "(model-side enumeration)."
                )

    @staticmethod
    def _claim_default(msg):
        if "strategy" not in msg["infer"]:
            default = "reparam" if msg["fn"].has_rsample else "reinforce"
            claim(msg, default, {}, "default")

    def postprocess_message(self, msg):
        if not is_latent(msg):
            return
        infer = msg["infer"]
        if infer.get("_stackvi_from_scan"):
            cls = lookup(infer["strategy"], msg["name"])
            cls.transform(msg)  # the scan's trace holds the value from before the transform
            self._record(cls, msg)
            return
        if not infer.get("_stackvi_sampled"):
            return
        self._claim_default(msg)
        name = msg["infer"]["strategy"]
        cls = lookup(name, msg["name"])
        cls.validate(msg, f"infer={{'strategy': '{name}'}}")
        cls.transform(msg)
        if not self.in_scan:
            record = self._record(cls, msg)
            if record is not None and record.axis is None:
                # the sample as every later line reads it (inner handlers, e.g. trace, copy
                # it after us): the data-flow analysis finds the terms it cannot reach
                msg["value"] = tag(msg["value"], score_axis(self.token, msg["name"]),
                                   msg["name"], dist_name(msg), f"claimed by {name}")

    def _record(self, cls, msg):
        rec = current_recorder()
        if rec is not None:
            record = cls.record(msg)
            if record is not None:
                rec.add(record._replace(trace=self.token))
                return record
        return None


def simulate(fn: Callable, *args, **kwargs) -> Trace:
    """Run ``fn`` (usually a guide) under its strategies and return its trace.

    Unclaimed latent sites get the default strategy; non-pathwise samples are
    detached and recorded for the enclosing objective's estimator, with the
    structure it needs derived from this trace (which later guide sites may
    mix a plate's elements, see :mod:`stackvi.gradients.structure`).
    """
    from stackvi.gradients.structure import pool_shared_plates
    from stackvi.handlers.enumerate import check_site_shapes

    rec = current_recorder()
    start = len(rec) if rec is not None else 0
    token = rec.token() if rec is not None else None
    with _resolve(token=token):
        tr = numbered(trace(fn).get_trace(*args, **kwargs), token)
    # here, not only in score_model: a program that never scores a model (a cost
    # written as a guide factor) must not sum an enumerated dim silently either
    check_site_shapes(tr)
    if rec is not None:
        pool_shared_plates(rec, start, tr)
    return tr
