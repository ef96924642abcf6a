"""Attend-Infer-Repeat (Eslami et al., 2016) as plain NumPyro functions.

The model of the PLDI 2024 paper's main experiment: an image is a sum of up to
``steps`` objects, each drawn by a decoder and placed on the canvas by a
differentiable spatial transformer; the guide attends to one object per step::

    present_0 = 1
    for t < steps:
        z_pres_t  ~ Bernoulli(pres_prior[t])
        present_{t+1} = present_t · z_pres_t     (once 0 it stays 0)
        z_where_t ~ Normal([3, 0, 0], [0.2, 1, 1])   (scale, x, y; masked by present_{t+1})
        z_what_t  ~ Normal(0, I_50)                  (masked by present_{t+1})
        canvas   += present_{t+1} · place(sigmoid(decoder(z_what_t) − 2), z_where_t)
    x ~ Normal(canvas, 0.3)   (50×50 pixels)

* decoder ``z_what (50) -> 200 -> 400``: a 20×20 object;
* guide: an LSTM cell over ``[image (2500), z_what_{t−1}, z_where_{t−1},
  present_t]`` (2554 -> 256), a predictor ``256 -> 7`` (z_pres probability,
  z_where loc and scale), and an object encoder ``400 -> 200 -> 100`` on the
  window the guide's ``z_where_t`` cuts out of the image (z_what loc and scale).

**Why AIR trains (and why it collapsed to 0 objects before).** Two choices,
both from the paper's and Pyro's AIR:

* *The guide's z_where is relative to the prior*: ``loc = where_loc + out``,
  ``scale = where_scale · softplus(out)`` (Pyro's ``examples/air``). With a
  free ``loc = out``, the untrained predictor proposes ``s ≈ 0`` where the
  prior says ``s ≈ 3 ± 0.2``: every present object costs ≈ 100 nats of KL
  (``3² / (2 · 0.2²)``) and reads a window blown up by ``1/s``, so a
  low-variance estimator (MVD, enumeration) learns at once that *no object* is
  best — and with ``z_pres = 0`` the masked ``z_where``/``z_what`` get no
  gradient to repair that. Relative to the prior, an object starts at the
  prior's scale and costs only its ``z_what`` KL.
* *The z_pres prior matches the data's counts*: :data:`COUNT_PRIOR` =
  ``(2/3, 1/2, 0.05^5)`` per step is uniform over 0, 1 and 2 objects (as
  :func:`stackvi.data.multi_mnist` draws them) and makes a third object as
  unlikely as the paper does. The paper's sparse prior
  (:data:`PAPER_PRES_PRIOR`, ``0.05, 0.05^2.3, 0.05^5``: each extra object
  pays ≈ 3, 7, 15 nats) needs far longer runs than ours (40 epochs of 60,000
  images): with it, MVD on the shrunken AIR of ``tutorials/06_air.py`` (then
  20×20, Adam 1e-3) learned one object per image and stalled there (count accuracy 0.53
  after 1,500 steps, no image ever given 2 objects), because the second
  step's ``z_where`` learns only from samples with ``z_pres_1 = 1``, which
  the prior makes rare; with ½ per step (Adam 3e-3) second objects appeared
  within 500 steps (accuracy 0.65 at 600). Pyro's AIR tutorial discusses the
  same trade-off (a small prior against splitting digits; the original work
  anneals it from near 1).

The decoder's output bias −2 (objects start dark) is Pyro's
``--decoder-output-bias -2``: a mid-gray square would be penalized over its
whole window and push the guide to turn objects off.

**Once 0 it stays 0, the enumerable way.** Every ``z_pres_t`` is drawn, but
only the running product ``present`` matters downstream. Once an object was
absent, the later ``z_pres_t`` are dummies: the model draws them from the prior
``Bernoulli(pres_prior[t])`` and the guide from *the same* distribution (its
logit is ``present · ℓ_t + (1 − present) · logit(pres_prior[t])``), so each adds
``log p − log q = 0`` to every sample, its probability does not depend on any
parameter, and the ELBO is exactly that of the "stays 0" model. Pyro's AIR
writes ``Bernoulli(p · present)`` instead, which gives the impossible value 1
probability 0: enumeration (and MVD's δ₁ branch) would evaluate ``0 · log 0``.
Masking the dummy sites (``.mask(present)``) is the other textbook way, but
stackvi's ``enumerate`` takes its weights from the masked ``log_prob`` (0, i.e.
weight 1 for *both* values) and double-counts the absent branch. So every
``z_pres_t`` is a plain, unannotated, unmasked Bernoulli site and *any* gradient
strategy can be chosen for it from outside (:data:`ESTIMATORS`). ``z_where_t``
and ``z_what_t`` are masked by ``present`` (they stay pathwise).

**Spatial transformer.** ``z_where = (s, x, y)`` maps canvas coordinates ``u``
in ``[−1, 1]²`` to object coordinates ``s·u + (x, y)`` (PyTorch's
``affine_grid`` with ``θ = [[s, 0, x], [0, s, y]]``, ``align_corners=False``),
and the object is read by bilinear sampling with zero padding
(``grid_sample``). The grid is axis-aligned, so bilinear sampling factors
into one interpolation matrix per axis — ``hat(p − a) = max(0, 1 − |p − a|)``
— and :func:`object_to_image` / :func:`image_to_object` are two batched
matrix products: differentiable in ``z_where`` everywhere bilinear sampling
is, no gathers. ``tests/models/test_air.py`` checks both against a direct
per-pixel bilinear sampler (and against PyTorch's ``grid_sample`` when torch
is installed).

**Networks: ``numpyro.module`` with stax.** The networks are stax
``(init_fn, apply_fn)`` pairs registered with ``numpyro.module`` (NumPyro's own
module wrapper, as in :mod:`stackvi.models.vae`), the LSTM cell a ten-line
stax-style pair. Why not ``flax_module`` / ``eqx_module``: neither flax nor
equinox is a dependency of stackvi (nor installed in its environments), and
three dense stacks and one LSTM cell do not justify a new core dependency;
stax ships with JAX. Swapping in ``flax_module("rnn", nn.LSTMCell(256), ...)``
changes only the four ``numpyro.module`` lines.

Sizes live in :class:`AIRConfig` (:data:`PAPER` is the paper's), passed as
``config=`` to both model and guide, so tests shrink everything.

>>> import jax
>>> cfg = AIRConfig(steps=2, canvas=12, object_size=4, z_what=3, rnn_hidden=8,
...                 encoder_hidden=8, decoder_hidden=8)
>>> x = jax.numpy.zeros((2, 144))
>>> obj = ESTIMATORS["enum"](cfg)                  # z_pres enumerated, from outside
>>> params = jax.eval_shape(lambda k: obj.init(k, x, config=cfg), jax.random.PRNGKey(0))
>>> sorted(params)
['decoder$params', 'encoder$params', 'predict$params', 'rnn$params']
>>> value, grads = jax.eval_shape(
...     lambda p, k: obj.value_and_grad(p, k, x, config=cfg), params, jax.random.PRNGKey(1))
>>> value.shape, grads["rnn$params"][0].shape      # (144 + 3 + 3 + 1 + 8) × 4·8
((), (159, 32))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.example_libraries import stax

from stackvi import estimators, handlers

__all__ = [
    "AIRConfig",
    "PAPER",
    "SHRUNKEN",
    "PAPER_PRES_PRIOR",
    "COUNT_PRIOR",
    "model",
    "guide",
    "object_to_image",
    "image_to_object",
    "lstm_cell",
    "infer",
    "reconstruct",
    "count_accuracy",
    "pres_sites",
    "ESTIMATORS",
    "plot_reconstructions",
]


#: The paper's z_pres prior per step (genjax.vi AIR): ``0.05, 0.05^2.3, 0.05^5``.
PAPER_PRES_PRIOR = (0.05, 0.05**2.3, 0.05**5)
#: The default: uniform over 0, 1, 2 objects (the data's counts); a third as in the paper.
COUNT_PRIOR = (2 / 3, 1 / 2, 0.05**5)


@dataclass(frozen=True)
class AIRConfig:
    """Sizes and priors of AIR.

    The default sizes are the PLDI 2024 / Eslami et al. setup; the default ``z_pres``
    prior is :data:`COUNT_PRIOR` (uniform over 0–2 objects), not the paper's sparser
    :data:`PAPER_PRES_PRIOR` (the module docstring says why).
    """

    steps: int = 3
    canvas: int = 50
    object_size: int = 20
    z_what: int = 50
    rnn_hidden: int = 256
    encoder_hidden: int = 200
    decoder_hidden: int = 200
    pres_prior: float | tuple[float, ...] = COUNT_PRIOR
    obs_scale: float = 0.3
    where_loc: tuple = (3.0, 0.0, 0.0)
    where_scale: tuple = (0.2, 1.0, 1.0)
    decoder_bias: float = -2.0  # objects start dark: sigmoid(-2) ≈ 0.12

    @property
    def rnn_input(self) -> int:
        return self.canvas**2 + self.z_what + 3 + 1

    def prior_at(self, t: int) -> float:
        """The z_pres prior of step ``t`` (a float: every step; a tuple: per step, its last
        entry for later steps)."""
        if isinstance(self.pres_prior, (int, float)):
            return float(self.pres_prior)
        return float(self.pres_prior[min(t, len(self.pres_prior) - 1)])


PAPER = AIRConfig()

#: A shrunken AIR that learns to count on two CPU cores in minutes (tutorial 06,
#: ``benchmarks/air_counting.py``): 32×32 canvases (``multi_mnist(..., canvas_size=32)``
#: keeps the paper's digit-to-canvas proportions: 13-pixel digits), 12×12 objects and
#: networks of 64 units. Smaller canvases cost accuracy, not just resolution: on
#: 20×20 (8-pixel digits) a thin digit carries too little ink for its object's KL,
#: and every estimator stopped near 0.87 count accuracy, counting such pairs as one.
SHRUNKEN = AIRConfig(canvas=32, object_size=12, z_what=16, rnn_hidden=64, encoder_hidden=64,
                     decoder_hidden=64)


# --------------------------------------------------------------------------- networks

def _jit_init(net):
    # One compiled init per network (cached below): eager stax init compiles an
    # XLA program per layer and op, and a fresh jit per trace would recompile.
    init_fn, apply_fn = net
    return jax.jit(init_fn, static_argnums=1), apply_fn


@functools.cache
def lstm_cell(hidden: int):
    """An LSTM cell as a stax-style pair: ``apply(params, x, h, c) -> (h, c)``.

    One ``(in + hidden) × 4·hidden`` matrix (gates i, f, g, o), forget bias 1.
    Leading dims of ``x``, ``h``, ``c`` broadcast.
    """

    def init_fn(rng, input_shape):
        fan_in = input_shape[-1] + hidden
        w = jax.random.normal(rng, (fan_in, 4 * hidden)) * math.sqrt(1.0 / fan_in)
        b = jnp.zeros(4 * hidden).at[hidden:2 * hidden].set(1.0)
        return tuple(input_shape[:-1]) + (hidden,), (w, b)

    def apply_fn(params, x, h, c):
        w, b = params
        z = _cat(x, h) @ w + b
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    return _jit_init((init_fn, apply_fn))


@functools.cache
def _mlp(hidden: int, out: int):
    return _jit_init(stax.serial(stax.Dense(hidden), stax.Relu, stax.Dense(out)))


def _cat(*arrays):
    """Concatenate along the last axis, broadcasting the leading (batch/enumerated) dims."""
    lead = jnp.broadcast_shapes(*(a.shape[:-1] for a in arrays))
    return jnp.concatenate([jnp.broadcast_to(a, lead + a.shape[-1:]) for a in arrays], -1)


# --------------------------------------------------------------------------- spatial transformer

def _hat(coords, size: int):
    """Bilinear weights ``max(0, 1 − |p − a|)``: normalized coords ``(..., n) -> (..., n, size)``.

    ``p = ((g + 1)·size − 1)/2`` (``align_corners=False``); pixels outside the
    source contribute nothing (zero padding).
    """
    p = ((coords + 1.0) * size - 1.0) / 2.0
    return jax.nn.relu(1.0 - jnp.abs(p[..., None] - jnp.arange(size)))


def _grid(n: int):
    return (2.0 * jnp.arange(n) + 1.0) / n - 1.0


def object_to_image(z_where, obj, canvas: int):
    """Place ``obj`` (``(..., o·o)``) on a ``canvas × canvas`` image at ``z_where = (s, x, y)``.

    Canvas pixel ``u`` reads the object at ``s·u + (x, y)`` (bilinear, zero padding).
    """
    o = int(round(obj.shape[-1] ** 0.5))
    s, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
    u = _grid(canvas)
    rows = _hat(s * u + y, o)                # (..., canvas, o): vertical
    cols = _hat(s * u + x, o)                # (..., canvas, o): horizontal
    obj = obj.reshape(obj.shape[:-1] + (o, o))
    img = rows @ obj @ jnp.swapaxes(cols, -1, -2)
    return img.reshape(img.shape[:-2] + (canvas * canvas,))


def image_to_object(z_where, image, size: int):
    """The ``size × size`` window of ``image`` (``(..., c·c)``) where ``z_where`` puts an object.

    Object pixel ``v`` reads the image at ``(v − (x, y)) / s`` — the inverse map.
    """
    c = int(round(image.shape[-1] ** 0.5))
    s, x, y = z_where[..., 0:1], z_where[..., 1:2], z_where[..., 2:3]
    v = _grid(size)
    rows = _hat((v - y) / s, c)              # (..., size, c)
    cols = _hat((v - x) / s, c)
    image = image.reshape(image.shape[:-1] + (c, c))
    out = rows @ image @ jnp.swapaxes(cols, -1, -2)
    return out.reshape(out.shape[:-2] + (size * size,))


# --------------------------------------------------------------------------- model and guide

@functools.cache
def _dense(out: int):
    return _jit_init(stax.Dense(out))


def _decoder(config: AIRConfig):
    return _mlp(config.decoder_hidden, config.object_size**2)


def model(x: jax.Array, config: AIRConfig = PAPER, subsample_size: int | None = None) -> None:
    """AIR's generative model of images ``x`` (shape ``(N, canvas²)``, values in [0, 1])."""
    n = x.shape[0]
    decode = numpyro.module("decoder", _decoder(config), (1, config.z_what))
    where_loc = jnp.asarray(config.where_loc)
    where_scale = jnp.asarray(config.where_scale)
    with numpyro.plate("data", n, subsample_size=subsample_size):
        batch = numpyro.subsample(x, event_dim=1)
        present = jnp.ones(batch.shape[:-1])
        canvas = jnp.zeros(batch.shape)
        for t in range(config.steps):
            z_pres = numpyro.sample(
                f"z_pres_{t}", dist.Bernoulli(probs=config.prior_at(t)))
            present = present * z_pres
            on = present > 0
            z_where = numpyro.sample(
                f"z_where_{t}", dist.Normal(where_loc, where_scale).mask(on[..., None])
                .to_event(1))
            z_what = numpyro.sample(
                f"z_what_{t}", dist.Normal(jnp.zeros(config.z_what), 1.0)
                .mask(on[..., None]).to_event(1))
            obj = jax.nn.sigmoid(decode(z_what) + config.decoder_bias)
            canvas = canvas + present[..., None] * object_to_image(z_where, obj, config.canvas)
        numpyro.sample("x", dist.Normal(canvas, config.obs_scale).to_event(1), obs=batch)


def guide(x: jax.Array, config: AIRConfig = PAPER, subsample_size: int | None = None) -> None:
    """AIR's guide: an LSTM attends to one object per step (see the module docstring)."""
    n = x.shape[0]
    h_dim = config.rnn_hidden
    where_loc = jnp.asarray(config.where_loc)
    where_scale = jnp.asarray(config.where_scale)
    rnn = numpyro.module("rnn", lstm_cell(h_dim), (1, config.rnn_input))
    predict = numpyro.module("predict", _dense(7), (1, h_dim))
    encode = numpyro.module("encoder", _mlp(config.encoder_hidden, 2 * config.z_what),
                            (1, config.object_size**2))
    with numpyro.plate("data", n, subsample_size=subsample_size):
        batch = numpyro.subsample(x, event_dim=1)
        lead = batch.shape[:-1]
        h = c = jnp.zeros(lead + (h_dim,))
        z_what = jnp.zeros(lead + (config.z_what,))
        z_where = jnp.zeros(lead + (3,))
        present = jnp.ones(lead)
        for t in range(config.steps):
            h, c = rnn(_cat(batch, z_what, z_where, present[..., None]), h, c)
            out = predict(h)
            # Absent already: a dummy drawn from the prior (see the module docstring).
            # Logits, not probabilities: a saturated sigmoid(out) is exactly 1.0 in float32,
            # q(z_pres = 0) exactly 0, and the costs MVD/enumeration evaluate at 0 infinite
            # (NaN gradients after ~3,500 steps of the tutorial's MVD run).
            prior = config.prior_at(t)
            logits = present * out[..., 0] + (1.0 - present) * math.log(prior / (1.0 - prior))
            z_pres = numpyro.sample(f"z_pres_{t}", dist.Bernoulli(logits=logits))
            present = present * z_pres
            on = (present > 0)[..., None]
            # Relative to the prior (see the module docstring): out = 0 is the prior's place.
            z_where = numpyro.sample(
                f"z_where_{t}", dist.Normal(where_loc + out[..., 1:4],
                                            where_scale * jax.nn.softplus(out[..., 4:7]))
                .mask(on).to_event(1))
            e = encode(image_to_object(z_where, batch, config.object_size))
            z_what = numpyro.sample(
                f"z_what_{t}", dist.Normal(e[..., :config.z_what],
                                           jax.nn.softplus(e[..., config.z_what:]))
                .mask(on).to_event(1))


# --------------------------------------------------------------------------- estimators

def pres_sites(msg: dict) -> bool:
    """Site selector: the ``z_pres_t`` sites (the discrete choices)."""
    return msg["name"].startswith("z_pres_")


def _step(msg: dict) -> int:
    return int(msg["name"].rsplit("_", 1)[1])


def _hybrid(config: AIRConfig) -> Callable[[dict], str | None]:
    """MVD for every step but the last, enumeration for the last (steps 0–1 / 2 in the paper)."""

    def choose(msg):
        if not pres_sites(msg):
            return None
        return "enumerate" if _step(msg) == config.steps - 1 else "mvd"

    return choose


def _estimator(kind: str, wrap: Callable, **options) -> Callable[..., estimators.Objective]:
    def build(config: AIRConfig = PAPER, model: Callable = model, guide: Callable = guide):
        return getattr(estimators, kind)(model, wrap(guide, config), **options)

    return build


#: Every estimator of the paper's AIR experiment, chosen from outside the model and
#: guide: ``ESTIMATORS[name](config, model=model, guide=guide) -> Objective``.
#: Only the ``z_pres_t`` sites are claimed; ``z_where`` / ``z_what`` stay pathwise.
#: REINFORCE's baseline is a moving average (Pyro's ``use_decaying_avg_baseline``).
ESTIMATORS: dict[str, Callable[..., estimators.Objective]] = {
    "reinforce": _estimator("elbo", lambda g, c: handlers.reinforce(g, sites=pres_sites)),
    "reinforce+baseline": _estimator(
        "elbo", lambda g, c: handlers.reinforce(g, sites=pres_sites, baseline="ema")),
    "enum": _estimator("elbo", lambda g, c: handlers.enumerate(g, sites=pres_sites)),
    "mvd": _estimator("elbo", lambda g, c: handlers.mvd(g, sites=pres_sites)),
    "hybrid": _estimator("elbo", lambda g, c: handlers.configure(g, _hybrid(c))),
    "iwae+reinforce": _estimator("iwae", lambda g, c: handlers.reinforce(g, sites=pres_sites),
                                 num_particles=2),
    "iwae+mvd": _estimator("iwae", lambda g, c: handlers.mvd(g, sites=pres_sites),
                           num_particles=2),
    "iwae+hybrid": _estimator("iwae", lambda g, c: handlers.configure(g, _hybrid(c)),
                              num_particles=2),
    "rws": _estimator("rws", lambda g, c: g, num_particles=10),
}


# --------------------------------------------------------------------------- inference helpers

def infer(params: dict, x: jax.Array, rng_key: jax.Array, config: AIRConfig = PAPER) -> dict:
    """One guide sample per image: ``{"count" (N,), "present" (N, T), "z_where" (N, T, 3)}``."""
    tr = handlers.trace(handlers.seed(handlers.substitute(guide, data=params), rng_key)
                        ).get_trace(x, config=config)
    pres = jnp.stack([tr[f"z_pres_{t}"]["value"] for t in range(config.steps)], -1)
    present = jnp.cumprod(pres, -1)
    where = jnp.stack([tr[f"z_where_{t}"]["value"] for t in range(config.steps)], -2)
    return {"count": present.sum(-1).astype(jnp.int32), "present": present, "z_where": where,
            "z_what": jnp.stack([tr[f"z_what_{t}"]["value"] for t in range(config.steps)], -2)}


def reconstruct(params: dict, inferred: dict, config: AIRConfig = PAPER) -> jax.Array:
    """The model's canvas (mean of ``x``) at the guide's sample ``inferred`` (:func:`infer`)."""
    _, decode = _decoder(config)
    obj = jax.nn.sigmoid(decode(params["decoder$params"], inferred["z_what"])
                         + config.decoder_bias)
    img = object_to_image(inferred["z_where"], obj, config.canvas)
    return jnp.sum(inferred["present"][..., None] * img, -2)


def count_accuracy(params: dict, x, counts, rng_key, config: AIRConfig = PAPER,
                   batch_size: int = 500) -> float:
    """Fraction of images whose inferred count (one guide sample) is the true count."""
    run = jax.jit(lambda p, xb, k: infer(p, xb, k, config)["count"])
    hits = 0
    for i, start in enumerate(range(0, x.shape[0], batch_size)):
        got = run(params, jnp.asarray(x[start:start + batch_size]), jax.random.fold_in(rng_key, i))
        hits += int(jnp.sum(got == jnp.asarray(counts[start:start + batch_size])))
    return hits / x.shape[0]


def plot_reconstructions(params: dict, x, rng_key, path, config: AIRConfig = PAPER,
                         num: int = 8, counts=None) -> None:
    """Save a PNG: ``num`` images with the inferred boxes drawn, and their reconstructions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = jnp.asarray(x[:num])

    @jax.jit  # one compile instead of op-by-op dispatch of the whole guide
    def run(params, x, key):
        inferred = infer(params, x, key, config)
        return inferred, reconstruct(params, inferred, config)

    inferred, recon = run(params, x, rng_key)
    recon = np.asarray(recon)
    side = config.canvas
    fig, axes = plt.subplots(2, num, figsize=(num * 1.1, 2.4))
    colors = ["tab:red", "tab:green", "tab:blue", "tab:orange"]
    for j in range(num):
        for r, img in enumerate((np.asarray(x[j]), recon[j])):
            ax = axes[r, j]
            ax.imshow(img.reshape(side, side), cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        for t in range(config.steps):
            if float(inferred["present"][j, t]) > 0:
                s, wx, wy = (float(v) for v in inferred["z_where"][j, t])
                # The object's square [-1, 1]² sits at canvas coords ((±1 − x)/s, (±1 − y)/s).
                x0 = ((-1 - wx) / s + 1) * side / 2 - 0.5
                y0 = ((-1 - wy) / s + 1) * side / 2 - 0.5
                w = 2 / s * side / 2
                axes[0, j].add_patch(plt.Rectangle((x0, y0), w, w, fill=False, lw=1.2,
                                                   color=colors[t % len(colors)]))
        title = f"n={int(inferred['count'][j])}"
        if counts is not None:
            title += f" ({int(counts[j])})"
        axes[0, j].set_title(title, fontsize=8)
    axes[0, 0].set_ylabel("data", fontsize=8)
    axes[1, 0].set_ylabel("recon.", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
