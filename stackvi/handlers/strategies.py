"""Gradient strategies: one handler per way of differentiating through a sample.

A strategy handler *claims* latent sample sites; the estimator then applies
that strategy's gradient rule to them. Claims are made in
``process_message``, which runs innermost-first, so **the innermost claim
wins**: a site's own ``infer={"strategy": ...}`` beats a wrapper, and an inner
wrapper beats an outer one. Three ways to claim, none of which edits the model:

* wrap: ``reinforce(guide, sites=["z"])`` (``sites`` may be a list, a
  predicate on the site message, or omitted for "every site"),
* configure: ``configure(guide, lambda site: "reinforce" if ... else None)``,
* or, when you do edit it, NumPyro's ``infer={"strategy": "reinforce"}``.

Sites nobody claims get the default: pathwise (``reparam``) when the
distribution has a reparameterized sampler, else ``reinforce`` — never a
silently dropped score term.

>>> import numpyro.distributions as dist
>>> from numpyro.handlers import seed, trace
>>> from stackvi import primitives as p
>>> def guide():
...     p.sample("b", dist.Bernoulli(0.3))
...     p.sample("z", dist.Normal(0.0, 1.0))
>>> tr = trace(seed(reinforce(guide, sites=["z"]), 0)).get_trace()
>>> tr["z"]["infer"]["strategy"], "strategy" in tr["b"]["infer"]
('reinforce', False)
>>> tr = simulate(seed(guide, 0))          # resolves defaults, stops gradients
>>> tr["b"]["infer"]["strategy"], tr["z"]["infer"]["strategy"]
('reinforce', 'reparam')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
from numpyro.handlers import trace
from numpyro.primitives import Messenger

from stackvi import baselines as _baselines
from stackvi.terms import Term, site_log_prob

__all__ = [
    "Strategy",
    "reparam",
    "reinforce",
    "strategies",
    "configure",
    "simulate",
    "Node",
    "collect_nodes",
    "STRATEGIES",
]

SiteSelector = Iterable[str] | Callable[[dict], bool] | None


def _is_latent(msg: dict) -> bool:
    return msg["type"] == "sample" and not msg["is_observed"]


def _dist_name(msg: dict) -> str:
    fn = msg["fn"]
    while hasattr(fn, "base_dist") and type(fn).__name__ in ("ExpandedDistribution",
                                                               "MaskedDistribution",
                                                               "Independent"):
        fn = fn.base_dist
    return type(fn).__name__


def _claim(msg: dict, name: str, options: dict, claimer: str) -> None:
    """Record ``name`` as the site's strategy unless an inner handler already did."""
    if "strategy" in msg["infer"]:
        return
    # Copy: a user may pass one ``infer`` dict object to many sites.
    msg["infer"] = {**msg["infer"], "strategy": name, **options}
    STRATEGIES[name].validate(msg, claimer)
    # Strategies that lay out values themselves (enumerate, mvd) do it now, before sampling.
    STRATEGIES[name].prepare(msg)
    msg["infer"]["_stackvi_prepared"] = True


class Strategy(Messenger):
    """Base class of strategy handlers; subclasses set ``name`` and ``validate``."""

    name: str = ""

    def __init__(self, fn=None, sites: SiteSelector = None, **options: Any):
        if isinstance(sites, str):
            sites = [sites]
        if sites is not None and not callable(sites):
            sites = frozenset(sites)
        self.sites = sites
        self.options = options
        super().__init__(fn)

    def selects(self, msg: dict) -> bool:
        if self.sites is None:
            return True
        if callable(self.sites):
            return bool(self.sites(msg))
        return msg["name"] in self.sites

    def process_message(self, msg):
        if _is_latent(msg) and self.selects(msg):
            _claim(msg, self.name, self.options, type(self).__name__)

    @staticmethod
    def validate(msg: dict, claimer: str) -> None:
        pass

    # How the site's value is transformed once sampled (outermost, in simulate).
    @staticmethod
    def transform(msg: dict) -> None:
        pass

    # Set the value before sampling (enumerate, mvd): called when the claim is made.
    @staticmethod
    def prepare(msg: dict) -> None:
        pass


class reparam(Strategy):
    """Pathwise gradients: the sample is a differentiable function of the parameters.

    Claiming a site whose distribution has no reparameterized sampler is an
    error (it would silently drop the gradient through the sample).
    """

    name = "reparam"

    @staticmethod
    def validate(msg, claimer):
        if not msg["fn"].has_rsample:
            raise ValueError(
                f"{claimer}: site '{msg['name']}' ({_dist_name(msg)}) has no reparameterized "
                "sampler, so a pathwise gradient does not exist. Use reinforce (score "
                "function) for it, or a relaxed/reparameterizable distribution."
            )


class reinforce(Strategy):
    """Score-function gradients: ``E[(L - b) ∇ log q(z)]``, the sample itself is not differentiated.

    ``baseline`` is ``None``, ``'ema'``, ``'loo'`` or a
    :class:`stackvi.baselines.Baseline`.
    """

    name = "reinforce"

    def __init__(self, fn=None, sites: SiteSelector = None, baseline=None):
        super().__init__(fn, sites, baseline=_baselines.resolve(baseline))

    @staticmethod
    def prepare(msg):
        # Learned / FromFunction baselines compute their value now, before the sample exists.
        baseline = _baselines.resolve(msg["infer"].get("baseline"))
        if hasattr(baseline, "register"):
            value = baseline.register(msg)
            msg["infer"] = {**msg["infer"], "_stackvi_baseline": value}

    @staticmethod
    def transform(msg):
        msg["value"] = jax.lax.stop_gradient(msg["value"])
        # Cached intermediates would carry the pathwise gradient into log q.
        msg["intermediates"] = []
        collector = _current_collector()
        if collector is not None:
            extra = ()
            if "_stackvi_baseline" in msg["infer"]:
                extra = (_baselines.baseline_term(msg, msg["infer"]["_stackvi_baseline"]),)
            collector.append(
                # resolve: infer={"baseline": "loo"} written in the model is a plain string.
                Node(msg["name"], site_log_prob({**msg, "scale": None}),
                     _baselines.resolve(msg["infer"].get("baseline")), extra=extra)
            )


STRATEGIES: dict[str, type[Strategy]] = {"reparam": reparam, "reinforce": reinforce}


class strategies(Messenger):
    """Claim several strategies at once: ``strategies(guide, {"reinforce": ["b"], ...})``.

    All claims of one ``strategies`` handler are at the same level, so naming
    a site under two strategies is an error.
    """

    def __init__(self, fn=None, config: dict[str, Iterable[str]] | None = None, **options):
        config = dict(config or {})
        owner: dict[str, str] = {}
        for strategy, sites in config.items():
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown strategy '{strategy}'; known: {sorted(STRATEGIES)}")
            for site in [sites] if isinstance(sites, str) else sites:
                if site in owner and owner[site] != strategy:
                    raise ValueError(
                        f"site '{site}' is claimed by both '{owner[site]}' and '{strategy}' "
                        "at the same level; choose one."
                    )
                owner[site] = strategy
        self.owner = owner
        self.options = options
        super().__init__(fn)

    def process_message(self, msg):
        if _is_latent(msg) and msg["name"] in self.owner:
            name = self.owner[msg["name"]]
            opts = self.options.get(name, {})
            if "baseline" in opts:
                opts = {**opts, "baseline": _baselines.resolve(opts["baseline"])}
            _claim(msg, name, opts, "strategies")


class configure(Messenger):
    """Choose strategies by a function of the site.

    ``config_fn(msg)`` returns a strategy name, ``(name, options)`` or ``None``.
    """

    def __init__(self, fn=None, config_fn: Callable[[dict], Any] | None = None):
        if config_fn is None:
            raise ValueError("configure needs a config_fn(site) -> strategy name or None")
        self.config_fn = config_fn
        super().__init__(fn)

    def process_message(self, msg):
        if not _is_latent(msg):
            return
        choice = self.config_fn(msg)
        if choice is None:
            return
        name, opts = (choice, {}) if isinstance(choice, str) else choice
        if name not in STRATEGIES:
            raise ValueError(
                f"configure: config_fn chose unknown strategy {name!r} for site "
                f"'{msg['name']}'; known: {sorted(STRATEGIES)}"
            )
        if "baseline" in opts:
            opts = {**opts, "baseline": _baselines.resolve(opts["baseline"])}
        _claim(msg, name, opts, "configure")


# ---------------------------------------------------------------------------
# Resolution: defaults, value transforms, and score-function nodes.


class Node(NamedTuple):
    """A non-pathwise sample: its log-density (named axes) and its baseline.

    ``kind`` says which gradient rule applies (``"reinforce"``, ``"enumerate"``:
    ``log_prob`` are the exact weights of an enumerated support, ``"mvd"``);
    ``extra`` holds further :class:`Term` s the rule needs (traced arrays), and
    ``info`` static data (hashable).
    """

    label: str
    log_prob: Term
    baseline: Any = None
    kind: str = "reinforce"
    extra: tuple = ()
    info: Any = None

    def with_axis(self, axis: str) -> Node:
        """The same node after a leading axis ``axis`` was stacked on (by ``vmap``)."""
        def add(t: Term) -> Term:
            return Term(t.label, t.array, (axis, *t.names))
        return self._replace(log_prob=add(self.log_prob), extra=tuple(add(t) for t in self.extra))


_COLLECTORS: list[list[Node]] = []


def _current_collector() -> list[Node] | None:
    return _COLLECTORS[-1] if _COLLECTORS else None


@contextmanager
def collect_nodes():
    """Collect the score-function nodes sampled in this block (one trace only)."""
    nodes: list[Node] = []
    _COLLECTORS.append(nodes)
    try:
        yield nodes
    finally:
        _COLLECTORS.pop()


class _resolve(Messenger):
    """Outermost handler of :func:`simulate`: default claims, then each strategy's transform.

    It must be outermost: ``postprocess_message`` runs outermost-first, so the
    transformed value is what every inner handler (``trace``) records and what
    the program's next line sees.
    """

    def process_message(self, msg):
        if not _is_latent(msg):
            return
        if msg["value"] is not None and not msg["infer"].get("_stackvi_owns_value"):
            return  # replayed / substituted: not sampled here
        msg["infer"] = {**msg["infer"], "_stackvi_sampled": True}
        # Claims written in the site's infer dict never pass through _claim.
        if "strategy" not in msg["infer"] and msg["infer"].get("enumerate") == "parallel":
            _claim(msg, "enumerate", {}, "infer={'enumerate': 'parallel'}")
        elif (msg["infer"].get("strategy") in STRATEGIES and msg["value"] is None
              and not msg["infer"].get("_stackvi_prepared")):
            if getattr(msg["infer"].get("baseline"), "trained", False):
                # Objective.init never runs _resolve, so it would not see the params.
                raise ValueError(
                    f"site '{msg['name']}': a trained baseline ({msg['infer']['baseline']!r}) "
                    "in the site's infer dict; attach it with a handler instead: "
                    "reinforce(guide, sites=[...], baseline=...), strategies or configure."
                )
            STRATEGIES[msg["infer"]["strategy"]].prepare(msg)

    def postprocess_message(self, msg):
        if not (_is_latent(msg) and msg["infer"].get("_stackvi_sampled")):
            return
        # The default is claimed here, not in process_message: strategy handlers
        # used as context managers *around* simulate are outer to _resolve, and
        # their process_message (their claim) runs after ours.
        if "strategy" not in msg["infer"]:
            default = "reparam" if msg["fn"].has_rsample else "reinforce"
            _claim(msg, default, {}, "default")
        name = msg["infer"]["strategy"]
        if name not in STRATEGIES:
            raise ValueError(
                f"site '{msg['name']}' asks for unknown strategy {name!r} in its infer dict; "
                f"known: {sorted(STRATEGIES)}"
            )
        STRATEGIES[name].validate(msg, f"infer={{'strategy': '{name}'}}")
        STRATEGIES[name].transform(msg)


def simulate(fn: Callable, *args, **kwargs) -> dict:
    """Run ``fn`` (usually a guide) under its strategies and return its trace.

    Unclaimed latent sites get the default strategy; non-pathwise samples are
    detached and registered as score-function nodes of the enclosing
    expectation (see :mod:`stackvi.estimators.core`).
    """
    with _resolve():
        return trace(fn).get_trace(*args, **kwargs)
