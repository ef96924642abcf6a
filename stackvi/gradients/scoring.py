"""Scoring a model against a guide trace: the one way every objective does it.

:func:`score_model` replays the model at the guide's values and checks that
they fit (shapes, sites on both sides, data that fits its plates); it numbers
the trace and tells the guide's records which of its terms cannot depend on
them (:mod:`stackvi.gradients.structure`). :func:`model_density` returns the
model's log-density as :class:`~stackvi.terms.Terms` at the guide's sample,
with discrete model latents the guide does not sample summed out exactly
(:mod:`stackvi.gradients.marginalize`). ``log_weight``, DReG, RWS's
``normalize`` and ``marginal`` all use it, so none of them scores a model
differently.

>>> import jax, numpyro, numpyro.distributions as dist
>>> from numpyro.handlers import seed
>>> def model():
...     c = numpyro.sample("c", dist.Bernoulli(0.3))         # summed out
...     numpyro.sample("x", dist.Normal(2.0 * c, 1.0), obs=1.0)
>>> terms = seed(lambda: model_density(model, {}), 0)()
>>> round(float(terms.total()), 4)   # log(0.7 N(1; 0, 1) + 0.3 N(1; 2, 1))
-1.4189
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from numpyro.handlers import replay, trace

from stackvi.gradients.records import current_recorder
from stackvi.gradients.strategy import numbered
from stackvi.gradients.structure import mark_upstream
from stackvi.handlers.density import trace_terms
from stackvi.handlers.enumerate import check_site_shapes
from stackvi.terms import Terms

__all__ = ["score_model", "model_density", "model_terms", "marginalized_sites"]


def _site_desc(site: dict) -> str:
    return f"'{site['name']}' ({type(site['fn']).__name__}, shape {tuple(site['fn'].shape())})"


def score_model(model: Callable, guide_trace: dict, *args, **kwargs):
    """Trace ``model`` with its latent sites set to the guide's values, checking they match.

    The returned trace is numbered for the estimator, and the records of the
    guide's sites learn which of its terms cannot depend on them
    (:func:`~stackvi.gradients.structure.mark_upstream`).
    """
    try:
        model_trace = numbered(trace(replay(model, guide_trace)).get_trace(*args, **kwargs))
    except (ValueError, TypeError, IndexError) as err:
        laid_out = _laid_out_sites(guide_trace)
        if not laid_out or "broadcast" not in str(err) and "shape" not in str(err):
            raise
        raise ValueError(
            f"the model failed on the guide's values with a shape error ({err}). Guide "
            f"site(s) {laid_out} carry extra leading dims (their support or branches, laid out "
            "by enumerate/mvd/disarm), and model code must broadcast over them: index with "
            "numpyro.ops.indexing.Vindex (Vindex(locs)[..., z]) and address the site's own "
            "dims from the right (negative axes); or use reinforce for those sites."
        ) from err
    _check(model_trace, guide_trace)
    rec = current_recorder()
    if rec is not None:
        mark_upstream(rec, guide_trace, model_trace)
    return model_trace


def _laid_out_sites(guide_trace: dict) -> list[str]:
    return [n for n, s in guide_trace.items()
            if s["type"] == "sample" and s["infer"].get("_stackvi_owns_value")]


def model_density(model: Callable, guide_trace: dict, *args, **kwargs) -> Terms:
    """``log p(x, z)`` at the guide's sample ``z``, as ``Terms`` labelled ``p:<site>``.

    The one way every objective scores a model: discrete model latents the
    guide does not sample are summed out exactly (:func:`model_terms`).
    """
    model_trace = score_model(model, guide_trace, *args, **kwargs)
    return model_terms(model, model_trace, guide_trace, args, kwargs)


def _check(model_trace: dict, guide_trace: dict) -> None:
    for name, site in model_trace.items():
        if site["type"] == "sample" and site["is_observed"]:
            _check_observed(site)
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name not in guide_trace:
            if site["fn"].has_enumerate_support:
                continue  # summed out exactly (model_terms)
            raise ValueError(
                f"model latent site {_site_desc(site)} is not sampled by the guide: add it to "
                "the guide, observe it, or marginalize it."
            )
        gsite = guide_trace[name]
        expected = tuple(site["fn"].shape())
        got = tuple(jnp.shape(gsite["value"]))
        if got != expected:
            # enumerate/mvd lay values out along extra dims left of the plates; sites
            # downstream of them broadcast along those dims too.
            got, expected = _trailing(got, expected, len(site["fn"].event_shape))
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


def _check_observed(site: dict) -> None:
    """Data whose shape does not fit its distribution (a plate's size ≠ the data's length)."""
    value_shape = tuple(jnp.shape(site["value"]))
    fn_shape = tuple(site["fn"].shape())
    try:
        jnp.broadcast_shapes(value_shape, fn_shape)
    except ValueError:
        plates = {f.name: f.size for f in site["cond_indep_stack"]}
        raise ValueError(
            f"observed site {_site_desc(site)}: the data has shape {value_shape}, which does "
            f"not fit the distribution's shape {fn_shape} (plates {plates}). A plate's size must "
            "equal the data's length along the plate's dim."
        ) from None


def _trailing(got: tuple, expected: tuple, event_dim: int = 0) -> tuple[tuple, tuple]:
    """Compare shapes where an enumeration scope added dims on the left (1s broadcast).

    Dims the guide's value has beyond the model's must be size 1 or dims that
    the scope handed to an enumerated/branched site.
    """
    from stackvi.handlers.enumerate import _current

    scope = _current()
    if scope is None or not scope.names:
        return got, expected
    n = min(len(got), len(expected))
    g, e = got[len(got) - n:], expected[len(expected) - n:]
    ok = all(a == b or a == 1 or b == 1 for a, b in zip(g, e, strict=True))
    longer = got if len(got) > len(expected) else expected
    extra = longer[:len(longer) - n]
    # scope dims count batch dims (right of them: the event dims)
    ok = ok and all(size == 1 or (i - len(longer) + event_dim) in scope.names
                    for i, size in enumerate(extra))
    return (e, e) if ok else (got, expected)


def marginalized_sites(model_trace: dict, guide_trace: dict) -> list[str]:
    """Model latents the guide does not sample (``score_model`` allows only finite-support ones)."""
    return [n for n, s in model_trace.items()
            if s["type"] == "sample" and not s["is_observed"] and n not in guide_trace]


def model_terms(model: Callable, model_trace: dict, guide_trace: dict, args: tuple,
                kwargs: dict) -> Terms:
    """The model's log-density terms at the guide's sample, discrete extras summed out.

    Sites that do not depend on a summed-out latent keep their own term (their
    plate axes, their scale); those that do are grouped by the latents they
    share, and each group becomes one term ``s · log Σ_z Π factors`` over its
    outermost plates — the scale outside the sum, as Pyro's and NumPyro's
    ``TraceEnum_ELBO`` (a group whose sites have different scales is an error).
    """
    check_site_shapes(guide_trace, model_trace)
    hidden = marginalized_sites(model_trace, guide_trace)
    if not hidden:
        return trace_terms(model_trace, prefix="p:")
    from stackvi.gradients.marginalize import summed_out

    return summed_out(model, model_trace, guide_trace, hidden, args, kwargs)
