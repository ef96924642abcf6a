"""One process of a ``jax.distributed`` run (see test_sharding.py).

Usage: multiprocess_fit.py PROCESS_ID NUM_PROCESSES PORT. Each process owns 2
CPU devices and its slice of the data rows; together they fit one ELBO on the
global mesh. Process 0 prints the result as JSON. With NUM_PROCESSES=1 the
same fit runs in one process on 2 devices (the reference).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

pid, nproc, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if nproc > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from toy_models import guide, model  # noqa: E402

import stackvi as sv  # noqa: E402
from stackvi import sharding  # noqa: E402

x = np.linspace(-2.0, 3.0, 16).astype(np.float32)
mesh = sharding.make_mesh(data=len(jax.devices()))
rows = len(x) // nproc
xs = sharding.global_batch(x[pid * rows:(pid + 1) * rows], mesh)
obj = sv.estimators.elbo(model, guide, num_particles=4)
params = sharding.replicate(obj.init(jax.random.PRNGKey(0), jnp.asarray(x)), mesh)
result = sv.fit(obj, jax.random.PRNGKey(5), xs, optimizer=optax.adam(0.05), num_steps=100,
                progress=False, init_params=params)
# Replicated: every process holds the whole value in its first local shard.
mz = float(np.asarray(result.params["mz"].addressable_shards[0].data))
if pid == 0:
    json.dump({"processes": jax.process_count(), "devices": len(jax.devices()),
               "history_tail": float(np.mean(result.history[-10:])), "mz": mz}, sys.stdout)
