"""Model-side enumeration: discrete model latents the guide does not sample are summed out.

``log_weight`` scores the model at the guide's sample. When the model has
latent sites with finite support (Categorical, Bernoulli, ...) that the guide
does not sample, they are marginalized exactly, so the model term is
``log Σ_z p(x, z | guide's latents)``: a Gaussian mixture with a
continuous-only guide trains on the exact marginal likelihood.

We reuse NumPyro's funsor machinery (``numpyro.contrib.funsor``: ``enum``,
``log_density``): plate-aware variable elimination, and for sequential latents
written with ``numpyro.contrib.control_flow.scan`` (an HMM) a parallel-scan
sum-product, linear in the sequence length. It runs under ``jit`` and
``vmap`` (particles). Only the marginalized sites are enumerated; the guide's
latents are substituted. The result is one :class:`~stackvi.terms.Term`
``p:marginal`` (a scalar per particle): REINFORCE sites in the guide then see
the whole model log-density as their learning signal (still unbiased, less
Rao-Blackwellized than per-plate terms).

Composes with pathwise and REINFORCE guide sites; guide-side ``enumerate``/
``mvd`` sites in the same objective are an error (their dims are not funsor's).

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
>>> from stackvi import estimators
>>> def model(x):
...     loc = numpyro.sample("loc", dist.Normal(0.0, 5.0))
...     with numpyro.plate("data", x.shape[0]):
...         k = numpyro.sample("k", dist.Bernoulli(0.5))
...         numpyro.sample("x", dist.Normal(loc * (2 * k - 1), 1.0), obs=x)
>>> def guide(x):
...     numpyro.sample("loc", dist.Normal(numpyro.param("m", 1.0), 0.1))
>>> obj = estimators.elbo(model, guide)
>>> x = jnp.array([-2.0, 2.0, 2.5])
>>> value, grads = jax.jit(obj.value_and_grad)(obj.init(jax.random.PRNGKey(0), x),
...                                            jax.random.PRNGKey(1), x)
>>> sorted(grads)
['m']
"""

from __future__ import annotations

from collections.abc import Callable

from numpyro.handlers import infer_config, substitute

from stackvi.handlers.density import trace_terms
from stackvi.handlers.enumerate import check_site_shapes
from stackvi.terms import Term, Terms

__all__ = ["model_terms", "marginalized_sites"]


def marginalized_sites(model_trace: dict, guide_trace: dict) -> list[str]:
    """Model latents the guide does not sample (``score_model`` allows only finite-support ones)."""
    return [n for n, s in model_trace.items()
            if s["type"] == "sample" and not s["is_observed"] and n not in guide_trace]


def _nesting(model_trace: dict) -> int:
    depth = 0
    for site in model_trace.values():
        for f in site.get("cond_indep_stack", ()):
            if f.dim is not None:
                depth = max(depth, -f.dim)
    return depth


def model_terms(model: Callable, model_trace: dict, guide_trace: dict, args: tuple,
                kwargs: dict) -> Terms:
    """The model's log-density terms at the guide's sample, discrete extras summed out."""
    check_site_shapes(guide_trace, model_trace)
    hidden = marginalized_sites(model_trace, guide_trace)
    if not hidden:
        return trace_terms(model_trace, prefix="p:")
    owned = [n for n, s in guide_trace.items() if s["type"] == "sample"
             and s["infer"].get("_stackvi_owns_value")]
    if owned:
        raise ValueError(
            f"the model's discrete sites {hidden} are summed out (model-side enumeration), and "
            f"the guide's sites {owned} are under enumerate/mvd: the two cannot be combined in "
            "one objective yet. Use reinforce or reparam for the guide sites, or sample the "
            "model's discrete sites in the guide."
        )
    # Imported here: funsor is only needed by models with marginalized sites.
    from numpyro.contrib.funsor import enum, log_density

    data = {n: s["value"] for n, s in guide_trace.items()
            if s["type"] == "sample" and not s["is_observed"]}
    names = set(hidden)

    def config(site):
        return {"enumerate": "parallel"} if site["name"] in names else {}

    enumerated = enum(infer_config(substitute(model, data=data), config),
                      first_available_dim=-_nesting(model_trace) - 1)
    log_joint, _ = log_density(enumerated, args, kwargs, {})
    return Terms((Term("p:marginal(" + ",".join(hidden) + ")", log_joint, ()),))
