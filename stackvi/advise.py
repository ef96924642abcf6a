"""Strategy advisor: measure every applicable gradient strategy per site, recommend the best.

``advise(objective, params, rng_key, *args)`` runs the objective's guide once to
find its non-pathwise latent sites (and the reparameterizable ones, where a
score-function or measure-valued rule is also possible), then, **one site at
a time with every other site at its default**, tries each registered
*unbiased* strategy (and, for ``reinforce``, each baseline) on that site and
measures, at the given ``params``:

* the **variance** of the gradient estimate: the sum over every parameter
  element of the variance across ``num_keys`` independent keys (one
  ``value_and_grad`` per key, vmapped);
* the **time** of one compiled ``value_and_grad`` step (median of
  ``repeats``, ``block_until_ready`` before the clock is read);
* **variance × time**: the variance of the estimate that a fixed budget of
  compute buys, the number to minimise.

A strategy that does not apply raises its own clear error (enumerate on a
continuous site, disarm on a non-Bernoulli one, MVD under IWAE): the advisor
records the reason instead of a row. Biased strategies (``gumbel_softmax``,
straight-through) are never measured. Sites claimed by the guide's own
handlers keep their claim (innermost claim wins) and are reported as fixed.

The recommendation takes, per site, the lowest variance × time; it is then
measured as a whole against the all-default configuration (sites interact:
the table's per-site rows are not additive). ``advice.configure(guide)``
applies it in one line.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model():
...     b = numpyro.sample("b", dist.Bernoulli(0.5))
...     numpyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=1.5)
>>> def guide():
...     numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", 0.3)))
>>> obj = estimators.elbo(model, guide, num_particles=2)
>>> advice = advise(obj, obj.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1),
...                 num_keys=16, repeats=1)
>>> advice.recommended["b"][0] in ("enumerate", "disarm", "mvd")   # exact or nearly
True
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from numpyro.handlers import seed, trace

from stackvi import handlers
from stackvi.gradients.strategy import STRATEGIES, is_latent

__all__ = ["advise", "Advice", "Measurement"]

Choice = tuple[str, dict]
# Strategies that are biased (claimed only with biased=True) are never measured.
_BIASED = frozenset({"gumbel_softmax", "straight_through", "relaxed"})
_BASELINES = (None, "loo")


class Measurement(NamedTuple):
    """One configuration measured: ``site`` under ``strategy`` (``options``), or an error."""

    site: str
    strategy: str
    options: dict
    variance: float = float("nan")
    seconds: float = float("nan")
    error: str | None = None

    @property
    def score(self) -> float:
        """Variance × time (lower is better)."""
        return self.variance * self.seconds

    @property
    def label(self) -> str:
        b = self.options.get("baseline")
        return self.strategy + (f" + {b}" if b is not None else "")


@dataclasses.dataclass(frozen=True)
class Advice:
    """What :func:`advise` measured and recommends (see the module docstring)."""

    rows: tuple[Measurement, ...]
    recommended: dict[str, Choice]
    default: Measurement
    combined: Measurement
    fixed: tuple[str, ...] = ()

    def configure(self, guide: Callable) -> Callable:
        """``guide`` with the recommended strategies claimed (``handlers.configure``)."""
        rec = self.recommended
        return handlers.configure(guide, lambda msg: rec.get(msg["name"]))

    def table(self) -> str:
        """A Markdown table: one row per (site, strategy), then default vs recommended."""
        lines = ["| site | strategy | grad variance | ms/step | variance × time |",
                 "|---|---|---:|---:|---:|"]
        for r in self.rows:
            if r.error is not None:
                lines.append(f"| {r.site} | {r.label} | — | — | not applicable: {r.error} |")
            else:
                best = " **(best)**" if self.recommended.get(r.site) == (r.strategy,
                                                                         r.options) else ""
                lines.append(f"| {r.site} | {r.label}{best} | {r.variance:.4g} | "
                             f"{1e3 * r.seconds:.3g} | {r.score:.4g} |")
        for name, r in (("all defaults", self.default), ("recommended", self.combined)):
            lines.append(f"| *{name}* | | {r.variance:.4g} | {1e3 * r.seconds:.3g} | "
                         f"{r.score:.4g} |")
        if self.fixed:
            lines.append(f"\nKept as they are (claimed by the guide's own handlers, or not "
                         f"among the sites advised on): {', '.join(self.fixed)}.")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _guide_sites(objective, params, rng_key, args, kwargs) -> tuple[list[dict], list[str]]:
    """Latent sites the guide samples (in order), and those its own handlers claimed."""
    from stackvi.estimators.core import substitute_params

    with substitute_params(params=params):
        tr = trace(seed(objective.guide, rng_key)).get_trace(*args, **kwargs)
    sites = [s for s in tr.values() if is_latent(s)]
    fixed = [s["name"] for s in sites if "strategy" in s["infer"]
             or s["infer"].get("enumerate") == "parallel"]
    return [s for s in sites if s["name"] not in fixed], fixed


def _candidates(site: dict, num_particles: int) -> list[Choice]:
    out: list[Choice] = []
    for name in STRATEGIES:
        if name in _BIASED:
            continue
        if name == "reinforce":
            out += [("reinforce", {"baseline": b}) for b in _BASELINES
                    if b is None or num_particles > 1]
        elif name == "reparam" and not site["fn"].has_rsample:
            continue
        else:
            out.append((name, {}))
    return out


def _configured(objective, choices: dict[str, Choice]):
    """``objective`` with ``choices`` claimed on its guide's sites (outside the guide)."""

    def pick(msg):
        # Replayed (model) and observed sites already carry a value here; only the guide's
        # own samples are claimed.
        if msg["value"] is not None:
            return None
        return choices.get(msg["name"])

    return dataclasses.replace(objective, program=handlers.configure(objective.program, pick))


def _measure(objective, params, rng_key, args, kwargs, num_keys, repeats):
    # One compilation per configuration: the same compiled step gives the gradient draws
    # (one call per key) and the step time.
    step = jax.jit(lambda k: objective.value_and_grad(params, k, *args, **kwargs)[1])
    keys = jax.random.split(rng_key, num_keys)
    draws = [jax.block_until_ready(step(k)) for k in keys]
    times = []
    for k in keys[:repeats]:
        t0 = time.perf_counter()
        jax.block_until_ready(step(k))
        times.append(time.perf_counter() - t0)
    grads = jax.tree_util.tree_map(lambda *g: np.stack(g), *draws)
    variance = sum(float(np.sum(np.var(g, axis=0, dtype=np.float64)))
                   for g in jax.tree_util.tree_leaves(grads))
    if not np.isfinite(variance):
        raise ValueError("non-finite gradient estimates")
    return variance, statistics.median(times)


def advise(objective, params: dict, rng_key, *args, num_keys: int = 256, repeats: int = 20,
           progress: Callable[[str], Any] | None = None,
           sites: Callable[[dict], bool] | list[str] | None = None, **kwargs) -> Advice:
    """Measure every applicable unbiased strategy per site; see the module docstring.

    ``sites``: the guide sites to advise on — names, or a selector ``msg -> bool``
    (as ``handlers.configure`` takes); the others keep their defaults and are listed
    as fixed. ``None``: every latent guide site. On a large model (AIR) each
    measurement compiles the whole step, so advising on the sites whose choice
    matters (the discrete ones) is what fits in minutes.
    """
    k_sites, k_measure = jax.random.split(rng_key)
    found, fixed = _guide_sites(objective, params, k_sites, args, kwargs)
    if sites is None:
        wanted = found
    else:
        pick = sites if callable(sites) else (lambda msg, names=frozenset(sites):
                                              msg["name"] in names)
        wanted = [s for s in found if pick(s)]
        if not callable(sites):
            unknown = sorted(set(sites) - {s["name"] for s in found} - set(fixed))
            if unknown:
                raise ValueError(f"advise: sites {unknown} are not latent sites of the guide "
                                 f"(its latent sites: {[s['name'] for s in found]})")
        fixed = fixed + [s["name"] for s in found if s not in wanted]
    sites = wanted
    num_particles = int(objective.info.get("num_particles", 1) or 1)

    def run(site, choice, choices):
        if progress is not None:
            progress(f"{site}: {choice[0]} {choice[1] or ''}".strip())
        try:
            var, sec = _measure(_configured(objective, choices), params, k_measure, args,
                                kwargs, num_keys, repeats)
        except (ValueError, TypeError, NotImplementedError) as err:
            return Measurement(site, choice[0], choice[1], error=str(err).split("\n")[0])
        return Measurement(site, choice[0], choice[1], var, sec)

    default = run("*", ("default", {}), {})
    if default.error is not None:
        raise ValueError(f"advise: the objective fails with its default strategies: "
                         f"{default.error}")
    rows, recommended = [], {}
    for site in sites:
        measured = [run(site["name"], c, {site["name"]: c})
                    for c in _candidates(site, num_particles)]
        rows += measured
        ok = [m for m in measured if m.error is None]
        if ok:
            best = min(ok, key=lambda m: m.score)
            recommended[site["name"]] = (best.strategy, best.options)
    combined = run("*", ("recommended", {}), recommended)
    if combined.error is not None:
        # Individually applicable choices can conflict together (e.g. enumerate and a
        # branch rule on dependent sites): say so rather than recommend it.
        raise ValueError(f"advise: the per-site choices {recommended} fail together: "
                         f"{combined.error}")
    return Advice(tuple(rows), recommended, default, combined, tuple(fixed))
