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
from typing import Any

import jax
from numpyro.primitives import Messenger

from stackvi import baselines as _baselines
from stackvi.gradients.records import SiteRecord
from stackvi.gradients.strategy import (
    STRATEGIES,
    Strategy,
    check_named_sites,
    claim,
    dist_name,
    is_latent,
    register,
    simulate,
    wrap_scan_body,
)
from stackvi.terms import site_log_prob

__all__ = [
    "Strategy",
    "reparam",
    "reinforce",
    "strategies",
    "configure",
    "simulate",
    "STRATEGIES",
]

SiteSelector = Iterable[str] | Callable[[dict], bool] | None


@register
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
                f"{claimer}: site '{msg['name']}' ({dist_name(msg)}) has no reparameterized "
                "sampler, so a pathwise gradient does not exist. Use reinforce (score "
                "function) for it, or a relaxed/reparameterizable distribution."
            )


@register
class reinforce(Strategy):
    """Score-function gradients: ``E[(L - b) ∇ log q(z)]``, the sample itself is not differentiated.

    ``baseline`` is ``None``, ``'ema'``, ``'loo'`` or a
    :class:`stackvi.baselines.Baseline`.
    """

    name = "reinforce"
    detach_own_term = True
    higher_order = "score"

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

    @classmethod
    def record(cls, msg):
        extra = ()
        if "_stackvi_baseline" in msg["infer"]:
            extra = (_baselines.baseline_term(msg, msg["infer"]["_stackvi_baseline"]),)
        # resolve: infer={"baseline": "loo"} written in the model is a plain string.
        return SiteRecord(msg["name"], site_log_prob({**msg, "scale": None}), cls.name,
                          _baselines.resolve(msg["infer"].get("baseline")), extra=extra)

    @classmethod
    def gradient(cls, record, ctx):
        return ctx.score_term(record)

    @classmethod
    def gradients(cls, records, ctx):
        # One vectorized term for all records of one layout (no baseline, linear value):
        # a per-record term would let XLA recompute the shared signals in every fusion.
        plain = [r for r in records if r.baseline is None and ctx.batchable]
        out = ctx.batched_score_terms(plain) if plain else 0.0
        for record in records:
            if not (record.baseline is None and ctx.batchable):
                out = out + ctx.score_term(record)
        return out


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
        self.config, self.owner, self.options = config, owner, options
        self._seen: set[str] = set()
        self.check_names = True
        super().__init__(fn)

    def __enter__(self):
        self._seen = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        out = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self.check_names:
            check_named_sites("strategies", self.owner, self._seen)
        return out

    def process_message(self, msg):
        if is_latent(msg):
            self._seen.add(msg["name"])
        if is_latent(msg) and msg["name"] in self.owner:
            name = self.owner[msg["name"]]
            opts = self.options.get(name, {})
            if "baseline" in opts:
                opts = {**opts, "baseline": _baselines.resolve(opts["baseline"])}
            claim(msg, name, opts, "strategies")
        wrap_scan_body(msg, lambda body: _unchecked(strategies(body, self.config, **self.options)))


def _unchecked(handler):
    handler.check_names = False  # a scan body sees only its own sites
    return handler


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
        wrap_scan_body(msg, lambda body: configure(body, self.config_fn))
        if not is_latent(msg):
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
        claim(msg, name, opts, "configure")
