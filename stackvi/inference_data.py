"""A fitted guide as an ArviZ ``InferenceData``: guide draws and posterior predictive.

:func:`to_arviz` draws ``num_samples`` latent values from the fitted guide (NumPyro's
``Predictive`` over the guide, with the fit's parameters), runs the model on each draw
with its observed sites left free (the posterior predictive), and hands both to ArviZ's
own converter, ``arviz.from_dict``. Dimensions that belong to a plate are named after
the plate, so ``az.summary`` and ArviZ's plots label them by plate name.

ArviZ is an optional dependency: ``pip install 'stackvi[arviz]'``. The draws come from
the variational approximation, not from a Markov chain: they are independent, the single
"chain" is a formality of the format, and MCMC diagnostics such as r-hat say nothing.

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, optax
>>> import stackvi as sv
>>> def model(x=None):
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     with numpyro.plate("data", 3):
...         numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
>>> def guide(x=None):
...     numpyro.sample("z", dist.Normal(numpyro.param("m", 0.5), 0.1))
>>> obj = sv.estimators.elbo(model, guide)
>>> result = sv.fit(obj, jax.random.PRNGKey(0), jnp.ones(3), optimizer=optax.adam(0.0),
...                 num_steps=1, progress=False)
>>> idata = sv.to_arviz(result, model, guide, jnp.ones(3), num_samples=100)
>>> idata.posterior["z"].shape, idata.posterior_predictive["x"].dims
((1, 100), ('chain', 'draw', 'data'))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import Predictive
from numpyro.primitives import Messenger

from stackvi.checkpoint import FitResult

if TYPE_CHECKING:
    import arviz

__all__ = ["to_arviz"]

_MISSING = ("to_arviz needs ArviZ, an optional dependency of stackvi: "
            "pip install 'stackvi[arviz]'")


def _import_arviz():
    try:
        with warnings.catch_warnings():  # ArviZ 0.2x announces its 1.0 refactor on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as err:
        raise ImportError(_MISSING) from err
    return arviz


class _unobserved(Messenger):
    """Leave every observed sample site free, so the model draws it (posterior predictive)."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["is_observed"] = False
            msg["value"] = None


def _latent_sites(tr) -> list[str]:
    return [name for name, site in tr.items()
            if (site["type"] == "sample" and not site["is_observed"]
                and not site["infer"].get("is_auxiliary", False))
            or site["type"] == "deterministic"]


def _dims(tr, names, draws: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each site's dims (after chain, draw): its plate's name where the sizes agree."""
    dims = {}
    for name in names:
        site, shape = tr[name], np.shape(draws[name])[2:]
        event_ndim = len(getattr(site.get("fn"), "event_shape", ()))
        batch_ndim = len(shape) - event_ndim
        plates = {f.dim: f for f in site.get("cond_indep_stack", ()) if f.dim is not None}
        dims[name] = [f"{name}_dim_{i}" for i in range(len(shape))]
        for i in range(batch_ndim):
            frame = plates.get(i - batch_ndim)
            if frame is not None and frame.size == shape[i]:
                dims[name][i] = frame.name
    return dims


def to_arviz(result: FitResult | Mapping[str, Any], model: Callable, guide: Callable, *args,
             num_samples: int = 1000, rng_key: jax.Array | None = None,
             posterior_predictive: bool = True, **kwargs) -> arviz.InferenceData:
    """Draws from a fitted guide and the model's posterior predictive, as ArviZ data.

    The model's and guide's arguments follow ``guide`` (``*args``, ``**kwargs``), as given
    to ``fit``; the observed values they pass become the ``observed_data`` group. A guide
    wrapped in strategy handlers is fine: outside an objective they only sample.

    Args:
        result: what :func:`stackvi.fit` returned (its constrained ``params`` are used), or
            a dict of constrained parameter values keyed by param site name.
        model: the model that was fitted.
        guide: the guide that was fitted.
        num_samples: number of independent draws (the ``draw`` dimension).
        rng_key: PRNG key for the draws; ``PRNGKey(0)`` when omitted.
        posterior_predictive: also run the model on each draw with its observed sites
            left free (groups ``posterior_predictive`` and ``observed_data``).

    Returns:
        Group ``posterior`` (the guide's latent sample sites, as the model names them,
            the guide's and the model's deterministic sites; one chain) and, if asked for,
            ``posterior_predictive`` and ``observed_data``.

    Raises:
        ImportError: ArviZ is not installed (``pip install 'stackvi[arviz]'``).
    """
    az = _import_arviz()
    params = dict(getattr(result, "params", result))
    key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    k_trace, k_guide, k_model = jax.random.split(key, 3)

    guide_trace = trace(seed(substitute(guide, params), k_trace)).get_trace(*args, **kwargs)
    latent = _latent_sites(guide_trace)
    draws = Predictive(guide, params=params, num_samples=num_samples,
                       return_sites=latent)(k_guide, *args, **kwargs)
    # The model once at the first draw: its observed sites, and its deterministic sites
    # (e.g. a reparameterized site's value), which belong to the posterior too.
    model_trace = trace(seed(substitute(model, {**params, **{
        k: v[0] for k, v in draws.items()}}), k_trace)).get_trace(*args, **kwargs)
    observed = [name for name, site in model_trace.items()
                if site["type"] == "sample" and site["is_observed"]]
    derived = [name for name, site in model_trace.items()
               if site["type"] == "deterministic" and name not in draws]
    predictive = Predictive(_unobserved(model), posterior_samples=draws, params=params,
                            return_sites=observed + derived)(k_model, *args, **kwargs)

    posterior = {k: np.asarray(draws[k])[None] for k in latent}
    posterior.update({k: np.asarray(predictive[k])[None] for k in derived})
    dims = {**_dims(guide_trace, latent, posterior), **_dims(model_trace, derived, posterior)}
    groups: dict[str, Any] = {"posterior": posterior}
    if posterior_predictive:
        groups["posterior_predictive"] = {k: np.asarray(predictive[k])[None] for k in observed}
        groups["observed_data"] = {k: np.asarray(model_trace[k]["value"]) for k in observed}
        dims.update(_dims(model_trace, observed, groups["posterior_predictive"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.from_dict(**groups, dims=dims)
