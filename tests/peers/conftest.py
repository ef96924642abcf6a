"""Shared harness for the peer suites (NumPyro, Pyro, GenJAX tests ported to stackvi).

A peer case is a model, a guide and arguments. It is checked in three steps:

1. The **exact** objective and its gradient come from :func:`exact_elbo`, never
   from stackvi: a brute-force sum over every joint configuration of the
   discrete latents, with NumPyro's own distributions evaluated under
   ``numpyro.handlers.substitute`` (all latents and params substituted), and
   ``jax.grad`` of that sum w.r.t. the unconstrained params. Model latents the
   guide does not sample are summed out inside the log (``log Σ_w p(x, z, w)``),
   per independent group, with the group's ``scale`` applied *outside* the
   sum, as Pyro's and NumPyro's ``TraceEnum_ELBO`` define it (all sites of one
   group must share a scale). A guide site's ``scale`` multiplies its
   ``log q`` term but not its sampling probability; likewise a ``mask`` removes
   a latent element's log-prob *term* but the element is still drawn from
   (guide) or summed against (model) its normalized distribution, so a masked
   element contributes nothing, as in the peers' unrolled "hand" models.
2. stackvi's estimate comes from ``estimators.elbo(model, strategy(guide))``
   with one of :data:`STRATEGIES` wrapped around the guide.
3. :func:`check_case` compares: an estimator that is exact (every guide latent
   enumerated) to float32 precision at one key; a stochastic one with
   :func:`assert_unbiased` over ``n`` fixed keys (|mean − exact| ≤ 4·σ̂/√N).

Helpers: :func:`lift_params` turns a ``params`` dict argument (NumPyro's tests
pass probabilities as plain arguments and differentiate w.r.t. them) into
``numpyro.param`` sites without touching the peer's model body;
:func:`unconstrained` maps constrained values to the optimizer's space.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints
from numpyro.distributions.distribution import MaskedDistribution
from numpyro.handlers import seed, substitute, trace

from stackvi import estimators, handlers
from tests.conftest import Z_SIGMAS, assert_unbiased, keys, per_key  # noqa: F401  (re-exported)

__all__ = [
    "STRATEGIES", "EXACT_STRATEGIES", "apply_strategy", "assert_unbiased", "check_case",
    "exact_elbo", "keys", "lift_params", "per_key", "unconstrained", "Z_SIGMAS",
]

MAX_CONFIGS = 1 << 16

# --------------------------------------------------------------------------- strategies

#: name -> (wrapper kind, kwargs). "default" leaves the guide as the peer wrote it
#: (its ``infer={"enumerate": ...}`` annotations claim ``enumerate``; unannotated
#: discrete sites get stackvi's default, REINFORCE).
STRATEGIES: dict[str, tuple[str | None, dict]] = {
    "default": (None, {}),
    "reinforce": ("reinforce", {"baseline": None}),
    "reinforce-ema": ("reinforce", {"baseline": "ema"}),
    "reinforce-loo": ("reinforce", {"baseline": "loo"}),
    "enumerate": ("enumerate", {}),
    "mvd": ("mvd", {}),
}

#: strategies that give the exact gradient when they cover every guide latent
EXACT_STRATEGIES = ("enumerate",)

#: particles per estimate (leave-one-out needs at least two)
PARTICLES = {"reinforce-loo": 4}


def apply_strategy(guide: Callable, strategy: str, sites: Sequence[str]) -> Callable:
    """``guide`` with ``strategy`` (a key of :data:`STRATEGIES`) claimed for ``sites``."""
    kind, kwargs = STRATEGIES[strategy]
    if kind is None or not sites:
        return guide
    return getattr(handlers, kind)(guide, sites=list(sites), **kwargs)


def lift_params(fn: Callable, constraint=constraints.simplex, names: Sequence[str] | None = None):
    """``fn(*args, params)`` with the entries of ``params`` registered as ``numpyro.param`` sites.

    The peer's body is unchanged: it receives the dict of (constrained) param
    values. Apply it to model and guide alike, so both see the same params.
    """

    def lifted(*args):
        *rest, params = args
        chosen = params if names is None else {k: params[k] for k in names}
        lifted_params = dict(params)
        for k, v in chosen.items():
            lifted_params[k] = numpyro.param(k, v, constraint=constraint)
        return fn(*rest, lifted_params)

    lifted.__name__ = getattr(fn, "__name__", "lifted")
    return lifted


def unconstrained(values: dict, constraint_of: dict) -> dict:
    """Constrained param values -> the optimizer's (unconstrained) space."""
    return {k: dist.biject_to(constraint_of[k]).inv(jnp.asarray(v)) for k, v in values.items()}


# --------------------------------------------------------------------------- exact answers


def _trace(fn, args, kwargs, values):
    return trace(seed(substitute(fn, data=values), jax.random.PRNGKey(0))).get_trace(
        *args, **kwargs)


def _latents(tr) -> dict:
    return {n: s for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}


def _support(site) -> np.ndarray:
    fn = site["fn"]
    if not fn.has_enumerate_support:
        raise NotImplementedError(
            f"exact_elbo: site '{site['name']}' ({type(fn).__name__}) is not discrete; "
            "write the exact answer by hand")
    return np.asarray(fn.enumerate_support(expand=False)).reshape(-1)


def _scale(site) -> float:
    s = site.get("scale")
    return 1.0 if s is None else float(np.asarray(s))


class ExactELBO:
    """The exact ELBO of ``(model, guide)`` at given args, as a function of unconstrained params.

    Built by :func:`exact_elbo`. ``value(params)`` and ``value_and_grad(params)``
    take the unconstrained dict stackvi's ``obj.init`` returns (same keys).
    """

    def __init__(self, model, guide, args, kwargs, params: dict, seed_perturb: int = 1):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        # params: discovered from the traces, with their constraints
        gtr = trace(seed(guide, jax.random.PRNGKey(0))).get_trace(*args, **kwargs)
        mtr = trace(seed(numpyro.handlers.replay(model, gtr), jax.random.PRNGKey(1))).get_trace(
            *args, **kwargs)
        self.constraints = {}
        for tr in (gtr, mtr):
            for n, s in tr.items():
                if s["type"] == "param":
                    self.constraints[n] = s["kwargs"].get("constraint", constraints.real)
        missing = set(self.constraints) - set(params)
        if missing:
            raise ValueError(f"exact_elbo: no value for params {sorted(missing)}")
        # guide latents and model-only latents, each element a separate variable
        self.zsites = [(n, s["value"].shape, _support(s)) for n, s in _latents(gtr).items()]
        self.gscales = {n: _scale(s) for n, s in gtr.items() if s["type"] == "sample"}
        z0 = {n: s["value"] for n, s in _latents(gtr).items()}
        mtr = _trace(model, args, kwargs, {**self._constrain(params), **z0})
        self.wsites = [(n, s["value"].shape, _support(s)) for n, s in _latents(mtr).items()
                       if n not in z0]
        self.mscales = {n: _scale(s) for n, s in mtr.items() if s["type"] == "sample"}
        self.zgrid, self.zaxes = self._grid(self.zsites)
        self.wgrid, self.waxes = self._grid(self.wsites)
        if len(self.zgrid) * len(self.wgrid) > MAX_CONFIGS:
            raise NotImplementedError("exact_elbo: too many configurations to brute-force")
        # dependency structure of model factors on model-only latents, found at
        # randomly perturbed params (so a coincidence of values cannot hide one)
        rng = np.random.default_rng(seed_perturb)
        pert = {k: v + 0.1 * rng.standard_normal(np.shape(v)) for k, v in params.items()}
        self.groups = self._groups(pert)

    # -- configurations
    @staticmethod
    def _grid(sites):
        """All joint configurations: {site: values (C, *shape)} and the per-element sizes."""
        sizes = []
        for _, shape, sup in sites:
            sizes += [len(sup)] * int(np.prod(shape, dtype=int))
        idx = np.array(list(itertools.product(*[range(k) for k in sizes])), dtype=np.int32)
        idx = idx.reshape(len(idx), len(sizes))
        values, col = {}, 0
        for name, shape, sup in sites:
            m = int(np.prod(shape, dtype=int))
            values[name] = jnp.asarray(sup[idx[:, col:col + m]].reshape((len(idx), *shape)))
            col += m
        return values, tuple(sizes)

    def _constrain(self, params):
        return {k: dist.biject_to(self.constraints[k])(jnp.asarray(v)) for k, v in params.items()}

    # -- per-factor log-probabilities (unscaled), vmapped over configurations
    def _factors(self, fn, cparams, values, unmasked=False):
        """{site: log-prob}, unscaled; ``unmasked``: latents' log-probs without their mask.

        A masked latent element is still drawn from (guide) or summed against
        (model) its distribution; only its log-prob *term* is masked out.
        """
        tr = _trace(fn, self.args, self.kwargs, {**cparams, **values})
        out = {}
        for n, s in tr.items():
            if s["type"] != "sample":
                continue
            d = s["fn"]
            if unmasked and not s["is_observed"]:
                while isinstance(d, MaskedDistribution):
                    d = d.base_dist
            out[n] = jnp.asarray(d.log_prob(s["value"]))
        return out

    def _model_table(self, cparams):
        """({site: log p (Cz, Cw, *batch)}, same unmasked) over all configurations."""

        def over_w(z):
            def both(w):
                values = {**z, **w}
                return (self._factors(self.model, cparams, values),
                        self._factors(self.model, cparams, values, unmasked=True))

            if self.wgrid:
                return jax.vmap(both)(self.wgrid)
            return jax.tree.map(lambda v: v[None], both({}))

        if self.zgrid:
            return jax.vmap(over_w)(self.zgrid)
        return jax.tree.map(lambda v: v[None], over_w({}))

    def _groups(self, params):
        cparams = self._constrain(params)
        table = jax.tree.map(np.asarray, jax.jit(self._model_table)(cparams)[0])
        nz = len(self.zgrid[next(iter(self.zgrid))]) if self.zgrid else 1
        n_elems = len(self.waxes)
        # element-level dependency of each factor element on each model-only latent element
        deps: dict[tuple, set] = {}
        col = 0
        for name, shape, _ in self.wsites:  # a latent's own factor is always in its group
            for e in np.ndindex(*shape):
                deps.setdefault((name, tuple(int(i) for i in e)), set()).add(col)
                col += 1
        for name, t in table.items():
            batch = t.shape[2:]
            t = np.where(np.isfinite(t), t, 0.0).reshape((nz, *self.waxes, *batch))
            for j in range(n_elems):
                spread = np.ptp(t, axis=1 + j)
                dep = np.any(spread > 1e-6 * (1 + np.abs(t).max()), axis=tuple(range(n_elems)))
                for e in np.ndindex(*batch):
                    if np.broadcast_to(dep, batch)[e]:
                        deps.setdefault((name, tuple(int(i) for i in e)), set()).add(j)
        # connected components of latent elements (union-find over factors)
        parent = list(range(n_elems))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for js in deps.values():
            js = sorted(js)
            for j in js[1:]:
                parent[find(j)] = find(js[0])
        groups: dict[int, dict] = {}
        for (name, e), js in deps.items():
            g = groups.setdefault(find(min(js)), {"elems": set(), "factors": [], "scales": set()})
            g["factors"].append((name, e))
            g["scales"].add(self.mscales[name])
        for j in range(n_elems):
            groups[find(j)]["elems"].add(j)
        for g in groups.values():
            if len(g["scales"]) > 1:
                raise NotImplementedError(
                    f"exact_elbo: factors {g['factors']} of one model-side enumeration group "
                    f"have different scales {sorted(g['scales'])}; write the exact answer by hand")
        return list(groups.values())

    # -- the objective
    def value(self, params) -> jax.Array:
        """E_q[Σ model costs − Σ scale·log q], summed exactly over the guide's configurations."""
        cparams = self._constrain(params)
        nz = len(self.zgrid[next(iter(self.zgrid))]) if self.zgrid else 1
        if self.zgrid:
            gf, gu = jax.vmap(lambda z: (self._factors(self.guide, cparams, z),
                                         self._factors(self.guide, cparams, z, True)))(self.zgrid)
        else:
            gf = jax.tree.map(lambda v: v[None], self._factors(self.guide, cparams, {}))
            gu = {}
        lq = jnp.zeros(nz)          # log q(z): the sampling probability (unscaled, unmasked)
        lq_scaled = jnp.zeros(nz)   # Σ scale·log q: the ELBO's guide term
        for name, v in gf.items():
            lq_scaled = lq_scaled + self.gscales[name] * jnp.sum(v.reshape(nz, -1), 1)
        for name, _, _ in self.zsites:
            lq = lq + jnp.sum(gu[name].reshape(nz, -1), 1)
        table, untable = self._model_table(cparams)
        wlat = {n for n, _, _ in self.wsites}
        n_elems = len(self.waxes)
        grouped = {f for g in self.groups for f in g["factors"]}
        cost = jnp.zeros(nz)
        for name, t in table.items():  # factor elements no model-only latent touches
            first = t[:, 0]
            keep = np.ones(first.shape[1:], bool)
            for n, e in grouped:
                if n == name:
                    keep[e] = False
            cost = cost + self.mscales[name] * jnp.sum(
                jnp.where(keep, first, 0.0).reshape(nz, -1), 1)
        for g in self.groups:  # scale · log Σ_w Π factors, per independent group
            tot = sum((untable if name in wlat else table)[name][(slice(None), slice(None), *e)]
                      for name, e in g["factors"])
            tot = tot.reshape((nz, *self.waxes))
            tot = tot[(slice(None), *(slice(None) if j in g["elems"] else 0
                                      for j in range(n_elems)))]
            (scale,) = g["scales"]
            cost = cost + scale * logsumexp(tot.reshape(nz, -1), axis=1)
        ok = jnp.isfinite(lq)
        q = jnp.exp(jnp.where(ok, lq, -jnp.inf))
        inner = jnp.where(ok, cost, 0.0) - jnp.where(ok, lq_scaled, 0.0)
        return jnp.sum(jnp.where(q > 0, q * inner, 0.0))

    def value_and_grad(self, params):
        """``(value, grads)`` (jitted; grads w.r.t. the unconstrained params)."""
        if not hasattr(self, "_vg"):
            self._vg = jax.jit(jax.value_and_grad(self.value))
        return self._vg(params)


def exact_elbo(model, guide, args=(), kwargs=None, *, params: dict) -> ExactELBO:
    """The exact ELBO (brute force) for ``model``/``guide`` at ``args``; see :class:`ExactELBO`.

    ``params``: unconstrained values for every param site (e.g. ``obj.init(...)``);
    used to find the model's dependency structure (perturbed) and to check keys.
    """
    return ExactELBO(model, guide, tuple(args), dict(kwargs or {}), params)


# --------------------------------------------------------------------------- checks


def _names(message: str, site: str) -> bool:
    """Whether ``message`` names ``site`` (quoted, or as ``site <name>``)."""
    return any(f in message for f in (f"'{site}'", f'"{site}"', f"site {site}", f"`{site}`"))


def check_case(model, guide, args, strategy: str, sites: Sequence[str], *,
               exact: ExactELBO | None = None, exact_value=None, exact_grads=None,
               is_exact: bool | None = None, n: int = 4000, seed: int = 0,
               init_key: int = 0, params: dict | None = None,
               error_ok: Sequence[str] = ()):
    """Run ``strategy`` on ``sites`` of ``guide`` and compare with the exact answer.

    The exact value and gradient come from ``exact`` (an :class:`ExactELBO`) or
    are given (``exact_value``, ``exact_grads``: dict keyed by param name, in the
    unconstrained space). ``is_exact`` (default: strategy in
    :data:`EXACT_STRATEGIES`) selects a tight float32 comparison at one key;
    otherwise ``n`` keys and :func:`assert_unbiased`.
    ``error_ok``: site names; where NumPyro itself rejects the case, a
    ``ValueError``/``NotImplementedError`` whose message names one of them also
    passes (returns ``None``).
    Returns ``(value, grads)`` (means over keys when stochastic).
    """
    if error_ok:
        try:
            return check_case(model, guide, args, strategy, sites, exact=exact,
                              exact_value=exact_value, exact_grads=exact_grads,
                              is_exact=is_exact, n=n, seed=seed, init_key=init_key,
                              params=params)
        except (ValueError, NotImplementedError) as e:
            assert any(_names(str(e), site) for site in error_ok), (
                f"error does not name any of the sites {list(error_ok)}: {e}")
            return None
    obj = estimators.elbo(model, apply_strategy(guide, strategy, sites),
                          num_particles=PARTICLES.get(strategy, 1))
    if params is None:
        params = obj.init(jax.random.PRNGKey(init_key), *args)
    if exact is not None:
        exact_value, exact_grads = exact.value_and_grad(params)
    assert set(exact_grads) == set(params), (sorted(exact_grads), sorted(params))
    if is_exact is None:
        is_exact = strategy in EXACT_STRATEGIES
    if is_exact:
        value, grads = jax.jit(obj.value_and_grad)(params, jax.random.PRNGKey(seed), *args)
        assert set(grads) == set(exact_grads), (sorted(grads), sorted(exact_grads))
        # float32: both sides are sums of terms of size ~|ELBO|, each rounded at
        # ~1e-7 relative; the brute force over hundreds of configurations was
        # measured 1.3e-5 off its float64 value at |ELBO| ≈ 7 (enum_elbo plate_12).
        atol = 1e-5 * (1.0 + abs(float(exact_value)))
        np.testing.assert_allclose(value, exact_value, rtol=1e-4, atol=atol, err_msg="value")
        for k in exact_grads:
            np.testing.assert_allclose(grads[k], exact_grads[k], rtol=1e-4, atol=atol,
                                       err_msg=f"grad {k}")
        return value, grads
    values, grads = per_key(obj, params, n, *args, seed=seed)
    assert set(grads) == set(exact_grads), (sorted(grads), sorted(exact_grads))
    atol = 1e-5 * (1.0 + abs(float(exact_value)))
    _assert_estimates(values, exact_value, f"{strategy}: value", atol)
    for k in sorted(exact_grads):
        g = np.asarray(grads[k])
        assert np.all(np.isfinite(g)), f"{strategy}: grad {k} not finite"
        _assert_estimates(g, exact_grads[k], f"{strategy}: grad {k}", atol)
    return values.mean(0), jax.tree.map(lambda g: g.mean(0), grads)


def _assert_estimates(samples, exact, what: str, atol: float) -> None:
    """:func:`assert_unbiased` elementwise, except where the ``n`` estimates are all equal.

    There (σ̂ = 0: e.g. REINFORCE on a site whose guide probabilities are 0/1, or MVD
    on independent sites with no data) the z-test's band is zero and its 1e-6 floor
    is below float32 rounding of a sum of many terms; the estimator is exact there,
    so it gets the exact comparison's float32 tolerance (see above).
    """
    samples = np.asarray(samples, np.float64)
    exact = np.broadcast_to(np.asarray(exact, np.float64), samples.shape[1:])
    zero = np.ptp(samples, axis=0) == 0
    if np.any(zero):
        np.testing.assert_allclose(samples[0][zero], exact[zero], rtol=1e-4, atol=atol,
                                   err_msg=f"{what} (zero-variance estimate)")
    if not np.all(zero):
        assert_unbiased(samples[:, ~zero], exact[~zero], what=what)



def pytest_collection_modifyitems(config, items):
    """The full peer matrices (``slow`` cases of tests/peers) also carry ``peers_matrix``.

    Every matrix was re-run against the current gradient layer (data-flow signals and
    checks included) and passes, its strict xfails and expected refusals updated. CI's
    slow stage (``.ci/run``) runs those that fit its time budget: ``test_numpyro_gradient.py``,
    ``test_numpyro_enum_elbo.py`` and ``test_pyro_valid_models.py`` (about 12 min on two
    cores); the others (``test_pyro_enum.py``, ``test_genjax_adev.py``,
    ``test_pyro_inference.py``, about 20 min more) are run by hand with
    ``pytest -n 2 -m peers_matrix tests/peers``.
    """
    for item in items:
        if "tests/peers/" in str(item.fspath) and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.peers_matrix)
