"""Model-side enumeration: discrete model latents the guide does not sample are summed out.

When the model has latent sites with finite support (Categorical, Bernoulli,
...) that the guide does not sample, the model term is
``log Σ_z p(x, z | guide's latents)``: a Gaussian mixture with a
continuous-only guide trains on the exact marginal likelihood.

The model is run once more under NumPyro's funsor ``enum`` (each summed-out
site takes its whole support along a dim of its own; the guide's values are
substituted, and a model annotated with ``config_enumerate`` does not
re-enumerate the sites the guide samples). Its log-density factors are then
contracted here, not by ``numpyro.contrib.funsor.log_density``, so that:

* factors that depend on no summed-out site stay ordinary terms (plates kept:
  REINFORCE guide sites keep their Rao-Blackwellized signals);
* the others are grouped by the summed-out sites they share; each group is
  ``s · log Σ_z Π factors`` over its outermost plates, inner plates and the
  summed-out sites eliminated (plate-aware variable elimination; a parallel
  scan for ``numpyro.contrib.control_flow.scan`` HMMs, linear in time), with
  the **scale outside the sum** (subsampling, ``handlers.scale``), as in Pyro's
  and NumPyro's ``TraceEnum_ELBO``; a group whose sites have different scales
  is an error;
* guide sites laid out along axes of their own (``enumerate``, ``mvd``) stay
  free variables of the contraction, so model- and guide-side enumeration
  combine in one objective; a summed-out site more global than a
  plate-local enumerated guide site is an error (as in ``TraceEnum_ELBO``).

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

import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable

import jax.numpy as jnp
from numpyro.handlers import infer_config, substitute
from numpyro.primitives import Messenger

from stackvi._compat import compute_markov_factors, get_shift, log_density, shift_name, unmasked
from stackvi.axes import Axis
from stackvi.gradients.dataflow import model_axis, probe, tag
from stackvi.gradients.records import current_recorder
from stackvi.gradients.strategy import dist_name
from stackvi.terms import Term, Terms, site_log_prob

__all__ = ["summed_out"]


class _own_infer(Messenger):
    """Gives every sample site its own ``infer`` dict (innermost, before anything writes).

    NumPyro passes the user's dict through, and ``infer_config`` and funsor's
    ``enum``/``trace`` write into it (``dim_to_name``): sites sharing one dict (a
    module-level ``{"enumerate": "parallel"}``) would read each other's dims and a
    summed-out site's own factor would lose its variable. Pyro copies it in ``sample``.
    """

    def process_message(self, msg):
        if msg["type"] == "sample":
            msg["infer"] = dict(msg["infer"])


class _tag_summed(Messenger):
    """Tags the support that funsor's ``enum`` lays out for each summed-out site
    (:mod:`stackvi.gradients.dataflow`: a factor must keep the dims of what it reads)."""

    def __init__(self, fn, names):
        self.names = names
        super().__init__(fn)

    def process_message(self, msg):
        value, fn = msg.get("value"), msg.get("fn")
        if msg["type"] != "sample" or msg["name"] not in self.names or value is None:
            return
        if jnp.size(value) > math.prod(fn.event_shape):  # a support of one value: no dim
            msg["value"] = tag(value, model_axis(msg["name"]), msg["name"], dist_name(msg),
                               "summed out in the model")


def _enumerated_trace(model, guide_trace, hidden, first_dim, args, kwargs):
    from numpyro.contrib.funsor import enum, plate_to_enum_plate
    from numpyro.contrib.funsor import trace as named_trace

    data = {n: s["value"] for n, s in guide_trace.items()
            if s["type"] == "sample" and not s["is_observed"]}
    names = set(hidden)

    def config(site):
        # Only the summed-out sites: a config_enumerate'd model must not re-enumerate
        # the sites whose values come from the guide.
        return {"enumerate": "parallel" if site["name"] in names else None}

    enumerated = _tag_summed(enum(infer_config(substitute(_own_infer(model), data=data),
                                               config), first_available_dim=first_dim), names)
    with plate_to_enum_plate():
        return named_trace(enumerated).get_trace(*args, **kwargs)


def _scope():
    from stackvi.handlers.enumerate import _current

    return _current()


def summed_out(model: Callable, model_trace: dict, guide_trace: dict, hidden: list[str],
               args: tuple, kwargs: dict) -> Terms:
    """The model's terms with ``hidden`` summed out (see the module docstring)."""
    import funsor

    funsor.set_backend("jax")
    scope = _scope()
    axes = dict(scope.names) if scope is not None else {}  # dim -> Axis of guide sites
    rec = current_recorder()
    if rec is not None:
        rec.sums_out = True  # Objective then checks the factors' data flow (dataflow.probe)
    nesting = _nesting(model_trace)
    first = min([-nesting - 1, *[d - 1 for d in axes]])
    tr = _enumerated_trace(model, guide_trace, hidden, first, args, kwargs)

    alias = {a: f"__stackvi_{i}" for i, a in enumerate(axes.values())}
    unalias = {v: k for k, v in alias.items()}
    # scan's enumeration unrolls its first step(s) as "_PREV_<site>": summed out too
    sum_vars = frozenset(n for n, site in tr.items() if site["type"] == "sample"
                         and not site["is_observed"] and shift_name(n, -get_shift(n)) in hidden)
    plates: set[str] = set()
    plain, factors = [], []  # factors: (funsor, scale, site names)
    time_to_factors: dict = defaultdict(list)
    time_to_init_vars: dict = defaultdict(frozenset)
    time_sites: dict = defaultdict(list)
    history = 0
    for name, site in tr.items():
        if site["type"] != "sample":
            continue
        plates |= {f.name for f in site["cond_indep_stack"] if f.dim is not None}
        if name in sum_vars:
            # a summed-out site's own factor is its measure: the normalized distribution,
            # masked or not (a mask zeroes costs, it does not unnormalize the sum)
            lp = log_density(unmasked(site["fn"]), site["value"])
        else:
            lp = log_density(site["fn"], site["value"], site.get("intermediates"))
            mask = site.get("mask")
            if mask is not None and mask is not True:
                lp = jnp.where(mask, lp, 0.0)
        lp = jnp.asarray(lp)
        dim_to_name = OrderedDict()
        for dim, var in site["infer"].get("dim_to_name", {}).items():
            dim_to_name[dim] = var
        for dim, axis in axes.items():
            dim_to_name[dim] = alias[axis]
        lp, dim_to_name = _named_dims(lp, dim_to_name)
        probe(lp, [model_axis(v) if v in sum_vars else unalias.get(v, v)
                   for v in dim_to_name.values()], f"p:{name}")
        deps = {v for v in dim_to_name.values()
                if v in sum_vars or v.startswith("_PREV_") or v.startswith("_time")}
        if not deps:
            plain.append(name)
            continue
        factor = funsor.to_funsor(lp, output=funsor.Real, dim_to_name=dim_to_name)
        scale = site.get("scale")
        time = next((v for v in dim_to_name.values() if v.startswith("_time")), None)
        if time is not None:
            tvar = funsor.Variable(time, funsor.Bint[_size(lp, dim_to_name, time)])
            history = max(history, max(get_shift(v) for v in dim_to_name.values()))
            time_to_factors[tvar].append(factor)
            time_to_init_vars[tvar] |= frozenset(v for v in dim_to_name.values()
                                                 if v.startswith("_PREV_"))
            time_sites[tvar].append((name, scale))
        else:
            factors.append((factor, scale, [name]))

    if time_to_factors:
        plates_and_time = frozenset(plates)
        markov_dims: dict = defaultdict(frozenset)
        for tvar, init_vars in time_to_init_vars.items():
            for var in init_vars:
                cur = shift_name(var, -get_shift(var))
                d2n = tr[cur]["infer"]["dim_to_name"]
                if var in d2n.values():
                    markov_dims[tvar] |= frozenset(d2n.values())
        markov = compute_markov_factors(time_to_factors, time_to_init_vars, markov_dims,
                                        sum_vars, plates_and_time, history,
                                        funsor.ops.logaddexp, funsor.ops.add)
        tsites = [s for v in time_sites.values() for s in v]
        for f in markov:
            factors.append((f, _common_scale(tsites), [n for n, _ in tsites]))

    out = [_plain_term(model_trace, n) for n in plain]
    local = _local_axes(alias)
    declared = {n: {f.name for f in site["cond_indep_stack"] if f.dim is not None}
                for n, site in tr.items() if site["type"] == "sample"}
    for group in _groups(factors, sum_vars):
        out.append(_with_size1_plates(_contract_group(group, sum_vars, plates, local, unalias),
                                      [declared[n] for _, _, ns in group for n in ns]))
    return Terms(tuple(out))


def _with_size1_plates(term: Term, site_plates: list[set]) -> Term:
    """``term`` with the plates every one of its sites lies in, size-1 ones included.

    funsor (like :func:`_named_dims`) drops dims of size 1, so a marginal inside a
    plate of size 1 would otherwise lose that plate's name and look independent of a
    guide site laid out along it (a false "not along its plate" error).
    """
    common = set.intersection(*site_plates) if site_plates else set()
    missing = tuple(sorted(p for p in common if p not in term.names))
    if not missing:
        return term
    array = jnp.reshape(term.array, (1,) * len(missing) + jnp.shape(term.array))
    return Term(term.label, array, missing + tuple(term.names))


def _size(lp, dim_to_name, var):
    for dim, v in dim_to_name.items():
        if v == var:
            return lp.shape[dim]
    raise KeyError(var)


def _named_dims(lp, dim_to_name):
    """Sum unnamed batch dims of size > 1, drop names of dims the array lacks or has at size 1."""
    nd = lp.ndim
    drop = tuple(i for i in range(nd) if lp.shape[i] != 1 and (i - nd) not in dim_to_name)
    if drop:
        lp = jnp.sum(lp, axis=drop, keepdims=True)
    kept = OrderedDict((d, v) for d, v in sorted(dim_to_name.items())
                       if -d <= nd and lp.shape[d] != 1)
    return lp, kept


def _plain_term(model_trace, name) -> Term:
    token = getattr(model_trace, "token", None)
    return site_log_prob(model_trace[name], label="p:" + name,
                         source=None if token is None else (token, name))


def _local_axes(alias) -> dict:
    """Plates of each enumerated/branched guide site, from its record (its weights' axes)."""
    rec = current_recorder()
    out = {}
    if rec is None:
        return out
    for r in rec.records:
        if r.axis is not None and r.axis in alias:
            out[alias[r.axis]] = (r.name, {n for n in r.log_prob.names if isinstance(n, str)
                                           and not isinstance(n, Axis)})
    return out


def _groups(factors, sum_vars):
    """Connected components of factors through the summed-out variables they share."""
    groups: list = []
    for f in factors:
        vars_f = (frozenset(f[0].inputs) & sum_vars) | frozenset(
            v for v in f[0].inputs if v.startswith("_PREV_"))
        merged = [g for g in groups if g[0] & vars_f]
        for g in merged:
            groups.remove(g)
        groups.append((vars_f.union(*[g[0] for g in merged]),
                       [f] + [x for g in merged for x in g[1]]))
    return [g[1] for g in groups]


def _common_scale(named_scales):
    values = set()
    for _, s in named_scales:
        if s is None:
            values.add(1.0)
            continue
        arr = jnp.asarray(s)
        if arr.ndim != 0:
            raise ValueError(
                "model-side enumeration supports only scalar scales (handlers.scale / a "
                f"subsampled plate); sites {[n for n, _ in named_scales]} have an array scale."
            )
        try:
            values.add(float(arr))
        except Exception:  # a traced scale: compare structurally below
            values.add(s)
    if len(values) != 1:
        raise ValueError(
            "Expected all enumerated sample sites to share a common scale (handlers.scale / "
            f"subsampling), but sites {[n for n, _ in named_scales]} have {len(values)} "
            "different scales: put the summed-out site and the sites that depend on it under "
            "the same scale, or sample it in the guide."
        )
    return values.pop()


def _contract_group(group, sum_vars, plates, local, unalias) -> Term:
    import funsor

    fs = [f for f, _, _ in group]
    names = [n for _, _, ns in group for n in ns]
    scale = _common_scale([(ns[0], s) for _, s, ns in group])
    inputs = frozenset().union(*[frozenset(f.inputs) for f in fs])
    group_plates = inputs & frozenset(plates)
    outermost = frozenset.intersection(*[frozenset(f.inputs) & group_plates for f in fs])
    elim_plates = group_plates - outermost
    for var, (site, site_plates) in local.items():
        if var in inputs and site_plates & elim_plates:
            raise ValueError(
                f"model-side enumeration of {sorted(inputs & sum_vars)} is more global than the "
                f"guide's enumerated/branched site '{site}' (plate(s) "
                f"{sorted(site_plates & elim_plates)}): the sum would need every element of it "
                "at once. Sample those model sites "
                "in the guide too, or use reinforce for the guide site."
            )
    try:
        with funsor.interpretations.normalize:
            cost = funsor.sum_product.sum_product(
                funsor.ops.logaddexp, funsor.ops.add, fs, plates=group_plates,
                eliminate=(inputs & sum_vars) | elim_plates)
        cost = funsor.optimizer.apply_optimizer(cost)
    except ValueError as e:
        if "intractable" not in str(e):
            raise
        # funsor's plate-aware elimination cannot factor the sum: summed-out sites in
        # crossed plates meet in one factor (TraceEnum_ELBO refuses this too)
        raise ValueError(
            f"model-side enumeration of {sorted(inputs & sum_vars)} over plates "
            f"{sorted(group_plates)} is intractable: summed-out sites in different plates "
            f"meet in a factor of both (sites {names}), so the sum does not factor plate by "
            "plate. Sample some of them in the guide, or unroll one of the plates."
        ) from None
    free = list(cost.inputs)
    data = cost.data if free else jnp.asarray(cost.data)
    axis_names = tuple(unalias.get(v, v) for v in free)
    label = "p:marginal(" + ",".join(sorted(set(names) & sum_vars) or names) + ")"
    array = data if scale == 1.0 else data * scale
    return Term(label, array, axis_names)


def _nesting(model_trace: dict) -> int:
    depth = 0
    for site in model_trace.values():
        for f in site.get("cond_indep_stack", ()):
            if f.dim is not None:
                depth = max(depth, -f.dim)
    return depth
