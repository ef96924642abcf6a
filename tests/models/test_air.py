"""AIR (stackvi.models.air): the spatial transformer, the model's structure, and every
estimator of the paper's experiment checked against exact enumeration.

The gradient checks run a shrunken AIR (one 12×12 image, 2 steps, 8-unit networks)
with the continuous sites (``z_where_t``, ``z_what_t``) **fixed** by ``substitute``, so
the only randomness is ``z_pres``. The exact answer is computed independently of
stackvi's estimators: for each of the 4 ``z_pres`` configurations, ``log p`` and ``log q``
come from NumPyro's own ``log_density`` on fully substituted traces, and the
configurations are summed (or, for IWAE and RWS, the pairs / multisets of them) in
plain JAX. Every estimator is then unbiased for its own objective
(``|mean − exact| ≤ 4 σ̂/√N`` on a few projections of the whole gradient,
:func:`tests.conftest.assert_unbiased`); enumeration must equal it.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.handlers import seed, substitute, trace
from numpyro.infer.util import log_density

from stackvi.models import air
from tests.conftest import assert_unbiased, per_key

CFG = air.AIRConfig(steps=2, canvas=12, object_size=4, z_what=3, rnn_hidden=8,
                    encoder_hidden=8, decoder_hidden=8, pres_prior=0.5)
N = 1000                                   # keys per unbiasedness check
CONTINUOUS = [f"z_{k}_{t}" for t in range(CFG.steps) for k in ("where", "what")]
PRES = [f"z_pres_{t}" for t in range(CFG.steps)]
CONFIGS = list(itertools.product((0.0, 1.0), repeat=CFG.steps))


# --------------------------------------------------------------------------- transformer

def _bilinear(img: np.ndarray, gx: float, gy: float) -> float:
    """grid_sample(bilinear, zeros, align_corners=False) of one point, pixel by pixel."""
    h, w = img.shape
    px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
    x0, y0 = math.floor(px), math.floor(py)
    out = 0.0
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            out += (1 - abs(px - xx)) * (1 - abs(py - yy)) * img[yy, xx]
    return out


def _naive_place(z_where, obj, canvas):
    s, x, y = z_where
    u = (2 * np.arange(canvas) + 1) / canvas - 1
    return np.array([[_bilinear(obj, s * u[j] + x, s * u[i] + y) for j in range(canvas)]
                     for i in range(canvas)])


def _naive_window(z_where, img, size):
    s, x, y = z_where
    v = (2 * np.arange(size) + 1) / size - 1
    return np.array([[_bilinear(img, (v[j] - x) / s, (v[i] - y) / s) for j in range(size)]
                     for i in range(size)])


WHERES = [(3.0, 0.0, 0.0), (2.2, -0.7, 0.4), (4.1, 1.3, -2.0), (1.0, 0.05, -0.1)]


@pytest.mark.parametrize("z_where", WHERES)
def test_transformer_is_bilinear_sampling(z_where):
    rng = np.random.default_rng(0)
    obj = rng.uniform(size=(5, 5))
    img = rng.uniform(size=(11, 11))
    zw = jnp.asarray(z_where, jnp.float32)
    placed = air.object_to_image(zw, jnp.asarray(obj.ravel(), jnp.float32), 11)
    np.testing.assert_allclose(placed.reshape(11, 11), _naive_place(z_where, obj, 11),
                               atol=1e-5)
    window = air.image_to_object(zw, jnp.asarray(img.ravel(), jnp.float32), 5)
    np.testing.assert_allclose(window.reshape(5, 5), _naive_window(z_where, img, 5), atol=1e-5)


@pytest.mark.slow
def test_transformer_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(1)
    obj = rng.uniform(size=(4, 6, 6)).astype(np.float32)
    img = rng.uniform(size=(4, 13, 13)).astype(np.float32)
    zw = np.array(WHERES, np.float32)
    theta = torch.zeros(4, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.tensor(zw[:, 0])
    theta[:, 0, 2], theta[:, 1, 2] = torch.tensor(zw[:, 1]), torch.tensor(zw[:, 2])
    grid = f.affine_grid(theta, (4, 1, 13, 13), align_corners=False)
    want = f.grid_sample(torch.tensor(obj)[:, None], grid, align_corners=False)
    got = air.object_to_image(jnp.asarray(zw), jnp.asarray(obj.reshape(4, -1)), 13)
    np.testing.assert_allclose(np.asarray(got), want.numpy().reshape(4, -1), atol=1e-5)
    inv = torch.zeros(4, 2, 3)
    inv[:, 0, 0] = inv[:, 1, 1] = torch.tensor(1 / zw[:, 0])
    inv[:, 0, 2] = torch.tensor(-zw[:, 1] / zw[:, 0])
    inv[:, 1, 2] = torch.tensor(-zw[:, 2] / zw[:, 0])
    grid = f.affine_grid(inv, (4, 1, 6, 6), align_corners=False)
    want = f.grid_sample(torch.tensor(img)[:, None], grid, align_corners=False)
    got = air.image_to_object(jnp.asarray(zw), jnp.asarray(img.reshape(4, -1)), 6)
    np.testing.assert_allclose(np.asarray(got), want.numpy().reshape(4, -1), atol=1e-5)


def test_transformer_gradient_in_z_where():
    obj = jnp.asarray(np.random.default_rng(2).uniform(size=16), jnp.float32)

    def f(zw):
        return jnp.sum(air.object_to_image(zw, obj, 9) ** 2)

    zw = jnp.array([2.5, 0.3, -0.2])
    g = jax.grad(f)(zw)
    eps = 1e-3  # bilinear sampling is piecewise smooth: stay between its kinks
    fd = [(f(zw.at[i].add(eps)) - f(zw.at[i].add(-eps))) / (2 * eps) for i in range(3)]
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=1e-3)


# --------------------------------------------------------------------------- the shrunken AIR

@functools.lru_cache(maxsize=1)
def _setup():
    """One image, initial params (predictor nudged: q(z_pres) is not ½), fixed continuous sites."""
    x = jnp.zeros((1, CFG.canvas**2)).at[0, 40:44].set(0.8).at[0, 52:56].set(0.8)
    obj = air.ESTIMATORS["reinforce"](CFG)
    params = jax.jit(lambda k: obj.init(k, x, config=CFG))(jax.random.PRNGKey(0))
    w, b = params["predict$params"]
    params = {**params, "predict$params": (w, b.at[0].set(0.4))}

    @jax.jit
    def draw(params):
        tr = trace(seed(substitute(air.guide, data=params), 3)).get_trace(x, config=CFG)
        return {name: tr[name]["value"] for name in CONTINUOUS}

    return x, params, draw(params)


def _fix(fn, fixed):
    """``fn`` with the continuous sites fixed (broadcast to each site's batch shape)."""

    def value(msg):
        if msg["name"] in fixed:
            return jnp.broadcast_to(fixed[msg["name"]], msg["fn"].shape())
        return None

    return substitute(fn, substitute_fn=value)


def _log_terms(params, x, fixed, config):
    """For one ``z_pres`` configuration: (log p, log q, log q_sample) by NumPyro's log_density."""
    values = {**params, **fixed, **{n: jnp.full((1,), v) for n, v in zip(PRES, config,
                                                                       strict=True)}}
    log_q, tr = log_density(air.guide, (x,), {"config": CFG}, values)
    log_p, _ = log_density(air.model, (x,), {"config": CFG}, values)
    # The probability of drawing this configuration.
    log_s = sum(jnp.sum(tr[n]["fn"].log_prob(tr[n]["value"])) for n in PRES)
    return log_p, log_q, log_s


@jax.jit
def _all_configs(params, x, fixed):
    out = [_log_terms(params, x, fixed, c) for c in CONFIGS]
    return tuple(jnp.stack(v) for v in zip(*out, strict=True))


def exact_elbo(params, x, fixed):
    log_p, log_q, log_s = _all_configs(params, x, fixed)
    return jnp.sum(jnp.exp(log_s) * (log_p - log_q))


def exact_iwae2(params, x, fixed):
    log_p, log_q, log_s = _all_configs(params, x, fixed)
    lw = log_p - log_q
    pair = jnp.logaddexp(lw[:, None], lw[None, :]) - jnp.log(2.0)
    return jnp.sum(jnp.exp(log_s[:, None] + log_s[None, :]) * pair)


def _compositions(k: int, parts: int):
    if parts == 1:
        yield (k,)
        return
    for i in range(k + 1):
        for rest in _compositions(k - i, parts - 1):
            yield (i,) + rest


def rws_surrogate(params, x, fixed, k: int):
    """Σ_c a_c (log p_c + log q_c), a_c = E[n_c w_c / Σ n w] over K iid draws (exact)."""
    log_p, log_q, log_s = _all_configs(params, x, fixed)
    lw, ls = jax.lax.stop_gradient(log_p - log_q), jax.lax.stop_gradient(log_s)
    counts = jnp.asarray(list(_compositions(k, len(CONFIGS))), jnp.float32)
    log_mult = (jax.scipy.special.gammaln(k + 1.0)
                - jnp.sum(jax.scipy.special.gammaln(counts + 1.0), 1) + counts @ ls)
    log_w = jnp.where(counts > 0, jnp.log(jnp.maximum(counts, 1.0)) + lw, -jnp.inf)
    w_bar = jnp.exp(log_w - jax.scipy.special.logsumexp(log_w, 1, keepdims=True))
    a = jnp.sum(jnp.exp(log_mult)[:, None] * w_bar, 0)
    return jnp.sum(a * (log_p + log_q))


def _directions(grads):
    flat, unravel = ravel_pytree(grads)
    return flat.shape[0], unravel


def _project(grads, dirs):
    return jnp.stack([ravel_pytree(grads)[0] @ d for d in dirs])


@functools.cache
def _exact(kind: str):
    x, params, fixed = _setup()
    fn = {"elbo": exact_elbo, "iwae": exact_iwae2,
          "rws": functools.partial(rws_surrogate, k=10)}[kind]
    value, grads = jax.jit(jax.value_and_grad(fn))(params, x, fixed)
    flat = ravel_pytree(grads)[0]
    keys = jax.random.split(jax.random.PRNGKey(42), 5)
    dirs = [flat / jnp.linalg.norm(flat)] + [jax.random.normal(k, flat.shape) for k in keys]
    return value, _project(grads, dirs), dirs


def _objective(name: str):
    """ESTIMATORS[name] built on the guide with its continuous sites fixed."""
    x, params, fixed = _setup()
    return air.ESTIMATORS[name](CFG, guide=_fix(air.guide, fixed)), x, params


GRADIENT_CASES = {
    # name: (which exact objective, xfail reason or None)
    "reinforce": ("elbo", None),
    "reinforce+baseline": ("elbo", None),
    "enum": ("elbo", None),
    # Before the gradient-layer redesign (0a5a2b4) MVD on z_pres_1, whose guide params
    # depend on the MVD branch of z_pres_0, raised ValueError: term 'p:z_pres_1' depends
    # on mvd site 'z_pres_1' but not along its plate(s) ['mvd:z_pres_0'].
    "mvd": ("elbo", None),
    # Fixed by the gradient layer (enumerated sites downstream of an MVD site are summed
    # out branch by branch): it raised "term 'p:z_pres_1' depends on ... 'enum:z_pres_1'
    # but not along its plate 'mvd:z_pres_0'".
    "hybrid": ("elbo", None),
    "iwae+reinforce": ("iwae", None),
    # Refused while MVD laid its branches out along an axis (a linear objective only); by
    # continuation (gradients/rerun.py) each branch's cost is the IWAE bound itself with the
    # site changed in one particle, and the enumerated last step is differentiated by
    # continuation too (its derivative summed over the support), so both are unbiased.
    "iwae+mvd": ("iwae", None),
    "iwae+hybrid": ("iwae", None),
    "rws": ("rws", None),
}


# Each case compiles one vmapped gradient step (tens of seconds on a busy 2-core CPU):
# these run with -m slow; reinforce and enum (and the refusals) by default.
SLOW = {"reinforce+baseline", "rws", "iwae+reinforce"}


def _case(name):
    kind, reason = GRADIENT_CASES[name]
    marks = [pytest.mark.xfail(strict=True, raises=ValueError, reason=reason)] if reason else []
    if name in SLOW:
        marks.append(pytest.mark.slow)
    return pytest.param(name, kind, marks=marks, id=name)


@pytest.mark.parametrize("name,kind", [_case(n) for n in GRADIENT_CASES])
@pytest.mark.slow
def test_estimator_gradient_matches_exact_enumeration(name, kind):
    obj, x, params = _objective(name)
    exact_value, exact_proj, dirs = _exact(kind)
    state = None
    if name == "reinforce+baseline":
        # Warm the moving average up on a few steps (then it is a fixed baseline).
        step = jax.jit(lambda s, k: obj.value_and_grad_with_state(params, s, k, x,
                                                                   config=CFG)[2])
        state = obj.init_state(params, jax.random.PRNGKey(0), x, config=CFG)
        for k in jax.random.split(jax.random.PRNGKey(9), 5):
            state = step(state, k)
    values, grads = per_key(_Bound(obj, CFG), params, N, x, state=state)
    proj = jax.vmap(lambda g: _project(g, dirs))(grads)
    if name == "enum":                      # exact: no sampling left
        np.testing.assert_allclose(values[0], exact_value, rtol=1e-4)
        np.testing.assert_allclose(proj[0], exact_proj, rtol=1e-3,
                                   atol=1e-4 * float(jnp.abs(exact_proj).max()))
        return
    if kind != "rws":                       # RWS's value is the IWAE bound, not its target
        assert_unbiased(values, exact_value, f"{name}: objective")
    assert_unbiased(proj, exact_proj, f"{name}: gradient projections")


class _Bound:
    """``obj`` with ``config=CFG`` bound, for :func:`per_key` (which passes positional args)."""

    def __init__(self, obj, config):
        self.obj, self.config = obj, config

    def value_and_grad(self, params, key, x):
        return self.obj.value_and_grad(params, key, x, config=self.config)

    def value_and_grad_with_state(self, params, state, key, x):
        return self.obj.value_and_grad_with_state(params, state, key, x, config=self.config)


# --------------------------------------------------------------------------- model structure

@pytest.mark.slow
def test_absent_stays_absent():
    """After z_pres_0 = 0 the later sites are dummies: they add nothing to log p − log q."""
    x, params, fixed = _setup()
    log_p, log_q, log_s = _all_configs(params, x, fixed)
    # (0, 0) and (0, 1) differ only in the dummy z_pres_1 (prior in model and guide).
    np.testing.assert_allclose(log_p[0] - log_q[0], log_p[1] - log_q[1], rtol=1e-6)
    np.testing.assert_allclose(log_s[0] - log_s[1], 0.0, atol=1e-6)   # pres_prior = ½
    np.testing.assert_allclose(jnp.exp(log_s).sum(), 1.0, rtol=1e-5)
    values = {**params, **fixed, "z_pres_0": jnp.zeros(1), "z_pres_1": jnp.ones(1)}
    canvas = jax.jit(lambda v: trace(substitute(air.model, data=v)).get_trace(
        x, config=CFG)["x"]["fn"].base_dist.loc)(values)
    assert float(jnp.abs(canvas).max()) == 0.0   # empty canvas


def test_estimator_table_is_complete():
    assert set(air.ESTIMATORS) == set(GRADIENT_CASES)
    assert isinstance(air.ESTIMATORS["rws"](CFG).info["num_particles"], int)
    assert air.ESTIMATORS["iwae+reinforce"](CFG).info["num_particles"] == 2


def test_enumerating_a_masked_site():
    """The other way to write 'stays 0' (mask the dummy sites): enumeration must still agree."""
    import numpyro

    from stackvi import estimators, handlers

    def model():
        b0 = numpyro.sample("b0", dist.Bernoulli(0.5))
        b1 = numpyro.sample("b1", dist.Bernoulli(0.5).mask(b0 > 0))
        numpyro.sample("x", dist.Normal(b0 + b0 * b1, 1.0), obs=2.0)

    def guide():
        p = numpyro.param("p", jnp.array([0.3, 0.6]))
        b0 = numpyro.sample("b0", dist.Bernoulli(p[0]))
        numpyro.sample("b1", dist.Bernoulli(p[1]).mask(b0 > 0))

    def log_n(v):
        return -0.5 * math.log(2 * math.pi) - 0.5 * (2.0 - v) ** 2

    q0, q1 = 0.3, 0.6
    exact = ((1 - q0) * (math.log(0.5 / 0.7) + log_n(0.0))
             + q0 * q1 * (math.log(0.5 / 0.3) + math.log(0.5 / 0.6) + log_n(2.0))
             + q0 * (1 - q1) * (math.log(0.5 / 0.3) + math.log(0.5 / 0.4) + log_n(1.0)))
    obj = estimators.elbo(model, handlers.enumerate(guide))
    value = jax.jit(lambda k: obj.estimate(obj.init(k), jax.random.PRNGKey(1)))(
        jax.random.PRNGKey(0))
    np.testing.assert_allclose(value, exact, rtol=1e-5)
