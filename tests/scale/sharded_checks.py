"""Run inside a process with 4 simulated CPU devices (see test_sharding.py).

Prints one JSON object with every quantity the test asserts on.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from toy_models import discrete_guide, discrete_model, guide, model  # noqa: E402

import stackvi as sv  # noqa: E402
from stackvi import estimators, sharding  # noqa: E402


def objectives():
    out = {
        "elbo": (estimators.elbo(model, guide, num_particles=8), model),
        "elbo_reinforce": (
            estimators.elbo(discrete_model, discrete_guide, num_particles=8), discrete_model),
    }
    if hasattr(estimators, "iwae"):
        out["iwae"] = (estimators.iwae(model, guide, num_particles=8), model)
    enumerate_ = getattr(sv.handlers, "enumerate", None)
    if enumerate_ is not None:
        out["elbo_enumerate"] = (
            estimators.elbo(discrete_model, enumerate_(discrete_guide), num_particles=4),
            discrete_model,
        )
    return out


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def main():
    report = {"devices": len(jax.devices())}
    x = jnp.linspace(-2.0, 3.0, 16)
    key = jax.random.PRNGKey(3)
    mesh = sharding.make_mesh(data=4)
    for name, (obj, _) in objectives().items():
        params = obj.init(jax.random.PRNGKey(0), x)
        v1, g1 = jax.jit(obj.value_and_grad)(params, key, x)
        xs = sharding.shard_batch(x, mesh)
        ps = sharding.shard_batch(params, mesh, size=x.shape[0])
        step = jax.jit(obj.value_and_grad)
        v2, g2 = step(ps, key, xs)
        hlo = step.lower(ps, key, xs).compile().as_text()
        report[name] = {
            "value_single": float(v1), "value_sharded": float(v2),
            "grad_diff": max_diff(g1, g2),
            "grad_scale": max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(g1)),
            "all_gathers": hlo.count("all-gather"),
            "all_reduces": hlo.count("all-reduce"),
            "x_sharding": str(xs.sharding.spec),
        }
    # particles over a (particles=2) x (data=2) mesh
    obj = estimators.elbo(model, guide, num_particles=8)
    params = obj.init(jax.random.PRNGKey(0), x)
    v1, g1 = jax.jit(obj.value_and_grad)(params, key, x)
    mesh2 = sharding.make_mesh(data=2, particles=2)
    with sharding.sharded_particles(mesh2):
        step = jax.jit(obj.value_and_grad)
        xs = sharding.shard_batch(x, mesh2)
        v2, g2 = step(params, key, xs)
        hlo = step.lower(params, key, xs).compile().as_text()
    report["particles"] = {"value_single": float(v1), "value_sharded": float(v2),
                           "grad_diff": max_diff(g1, g2), "all_gathers": hlo.count("all-gather")}
    # fit on sharded data
    xs = sharding.shard_batch(x, mesh)
    result = sv.fit(obj, jax.random.PRNGKey(5), xs, optimizer=optax.adam(0.05), num_steps=200,
                    progress=False)
    single = sv.fit(obj, jax.random.PRNGKey(5), x, optimizer=optax.adam(0.05), num_steps=200,
                    progress=False)
    report["fit"] = {"final_sharded": float(result.history[-20:].mean()),
                     "final_single": float(single.history[-20:].mean()),
                     "param_diff": max_diff(result.params, single.params)}
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
