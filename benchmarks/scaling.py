"""Step time of a data-parallel ELBO step vs number of (simulated) devices and batch size.

Each device count runs in its own interpreter (the CPU device count is fixed
when JAX starts, via ``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
The model is Bayesian logistic regression with a local latent per data point
(a per-row random effect), so both the data and the local guide parameters are
sharded along the data plate; the step is ``jit(obj.value_and_grad)`` plus an
optax update, exactly what ``stackvi.fit`` runs.

Caveat, printed with the table: simulated CPU devices share this machine's
cores, so more devices cannot be faster than the cores allow; the table shows
the overhead of partitioning (and that it stays small), not a real speed-up.

    python benchmarks/scaling.py [--quick] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)

SECTION = "scaling"


def worker(devices: int, batches: list[int], repeats: int) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax

    from stackvi import estimators, sharding

    dim = 32

    def model(x, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(dim), 1.0).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            u = numpyro.sample("u", dist.Normal(0.0, 0.5))
            numpyro.sample("y", dist.Bernoulli(logits=x @ w + u), obs=y)

    def guide(x, y):
        loc = numpyro.param("w_loc", jnp.zeros(dim))
        scale = numpyro.param("w_scale", 0.1 * jnp.ones(dim), constraint=dist.constraints.positive)
        numpyro.sample("w", dist.Normal(loc, scale).to_event(1))
        u_loc = numpyro.param("u_loc", jnp.zeros(x.shape[0]))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("u", dist.Normal(u_loc, 0.1))

    out = {}
    obj = estimators.elbo(model, guide, num_particles=4)
    mesh = sharding.make_mesh(data=devices)
    opt = optax.adam(1e-2)
    for n in batches:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, dim)).astype(np.float32)
        y = (rng.uniform(size=n) < 0.5).astype(np.float32)
        params = obj.init(jax.random.PRNGKey(0), x, y)
        xs, ys = sharding.shard_batch((x, y), mesh)
        params = sharding.shard_batch(params, mesh, size=n)
        opt_state = opt.init(params)

        @jax.jit
        def step(params, opt_state, key, x, y):
            value, grads = obj.value_and_grad(params, key, x, y)
            grads = jax.tree_util.tree_map(jnp.negative, grads)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        key = jax.random.PRNGKey(1)
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, opt_state, key, xs, ys))
        compile_s = time.perf_counter() - t0
        times = []
        for i in range(repeats):
            k = jax.random.fold_in(key, i)
            t0 = time.perf_counter()
            jax.block_until_ready(step(params, opt_state, k, xs, ys))
            times.append(time.perf_counter() - t0)
        out[str(n)] = {"median_ms": 1e3 * float(np.median(times)), "compile_s": compile_s}
    return out


def table(results: dict[int, dict], batches: list[int]) -> str:
    base = results[min(results)]
    lines = [
        "| devices | " + " | ".join(f"batch {n} (ms)" for n in batches) + " | ratio to 1 device |",
        "|---|" + "---|" * len(batches) + "---|",
    ]
    for d in sorted(results):
        r = results[d]
        ratios = [r[str(n)]["median_ms"] / base[str(n)]["median_ms"] for n in batches]
        lines.append(
            f"| {d} | " + " | ".join(f"{r[str(n)]['median_ms']:.2f}" for n in batches)
            + " | " + ", ".join(f"{x:.2f}" for x in ratios) + " |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    write_section(SECTION, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=str, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    batches = [int(b) for b in (args.batches or ("256,4096" if args.quick
                                                  else "256,1024,4096,16384")).split(",")]
    repeats = args.repeats or (10 if args.quick else 50)
    if args.worker:
        print(json.dumps(worker(args.worker, batches, repeats)))
        return
    results = {}
    for d in (1, 2, 4):
        out = subprocess.run(
            [sys.executable, __file__, "--worker", str(d), "--batches",
             ",".join(map(str, batches)), "--repeats", str(repeats)],
            capture_output=True, text=True, check=True)
        results[d] = json.loads(out.stdout.strip().splitlines()[-1])
    cores = os.cpu_count()
    text = (
        "## Scaling out: data-parallel ELBO step vs simulated devices\n\n"
        "Bayesian logistic regression (32 features) with a per-row random effect, ELBO with 4 "
        "particles, data and local parameters sharded over the `data` mesh axis "
        "(`stackvi.sharding`), one `jit` step = `value_and_grad` + Adam update. Median of "
        f"{repeats} steps. Simulated CPU devices share the machine's {cores} cores, so this "
        "shows the partitioning overhead, not a speed-up.\n\n" + table(results, batches)
        + "\n\nCommand: `python benchmarks/scaling.py --write-docs`.\n"
    )
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
