"""Scale out with JAX's own sharding: data plates and particles over a device mesh.

Nothing here schedules work. An objective is a pure JAX function, so it is
enough to *place* its inputs: put the data (the arrays indexed by the data
plate) on a ``Mesh`` with ``NamedSharding(mesh, P("data"))``, replicate the
global parameters, and ``jax.jit`` partitions the whole step (GSPMD): each
device scores its slice of the plate, and the plate sum becomes an
all-reduce. Random draws do not depend on the sharding (JAX's partitionable
threefry, on by default), so a sharded step gives the single-device result
for the same key, up to float reassociation.

Particles shard the same way: inside :func:`sharded_particles`,
:func:`stackvi.estimators.particles` constrains its per-particle keys — and so
everything vmapped over them — to the mesh axis you name.

Several processes (``jax.distributed.initialize``) use the same code: build the
global data array with :func:`global_batch` from each process's local rows.

>>> import jax, jax.numpy as jnp
>>> mesh = make_mesh(data=len(jax.devices()))
>>> x = shard_batch(jnp.zeros((8, 3)), mesh)
>>> tuple(x.sharding.spec)
('data',)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "make_mesh",
    "shard_batch",
    "replicate",
    "sharded_particles",
    "constrain_particles",
    "global_batch",
]

_PARTICLE_SHARDING: list[NamedSharding] = []


def make_mesh(data: int | None = None, particles: int = 1) -> Mesh:
    """A mesh with axes ``("particles", "data")`` over ``particles × data`` devices.

    ``data`` defaults to all devices not used for particles.
    """
    n = len(jax.devices())
    if data is None:
        if n % particles:
            raise ValueError(f"{n} devices do not split into {particles} particle groups")
        data = n // particles
    if data * particles > n:
        raise ValueError(
            f"a mesh of {particles} x {data} needs {data * particles} devices, "
            f"only {n} are visible (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "before importing jax)"
        )
    devices = np.asarray(jax.devices()[: data * particles]).reshape(particles, data)
    return Mesh(devices, ("particles", "data"))


def _leading(array: Any, size: int | None) -> bool:
    shape = np.shape(array)
    return len(shape) > 0 and (size is None or shape[0] == size)


def shard_batch(tree: Any, mesh: Mesh, axis: str = "data", size: int | None = None) -> Any:
    """Place ``tree`` on ``mesh``: arrays whose leading dimension is the data plate are split.

    With ``size`` given, only arrays whose leading dimension equals ``size``
    are split (the rest replicated); otherwise every array with a leading
    dimension is. The plate size must be divisible by the mesh axis size.
    """
    n = mesh.shape[axis]

    def place(x):
        if _leading(x, size):
            if np.shape(x)[0] % n:
                raise ValueError(
                    f"leading dimension {np.shape(x)[0]} is not divisible by the {n} devices of "
                    f"mesh axis '{axis}'; pad or trim the data plate"
                )
            return jax.device_put(x, NamedSharding(mesh, P(axis)))
        return jax.device_put(x, NamedSharding(mesh, P()))

    return jax.tree_util.tree_map(place, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of ``tree`` on all devices of ``mesh`` (global parameters)."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), tree)


@contextlib.contextmanager
def sharded_particles(mesh: Mesh, axis: str = "particles") -> Iterator[None]:
    """Within this block, ``particles(...)`` splits its particles over ``mesh`` axis ``axis``.

    Use it around the call that *traces* the objective (``jax.jit(...)(...)``
    the first time, or ``fit``); the constraint is part of the compiled step.
    """
    _PARTICLE_SHARDING.append(NamedSharding(mesh, P(axis)))
    try:
        yield
    finally:
        _PARTICLE_SHARDING.pop()


def constrain_particles(keys: jax.Array) -> jax.Array:
    """Apply the active particle sharding (if any) to per-particle keys."""
    if not _PARTICLE_SHARDING:
        return keys
    sharding = _PARTICLE_SHARDING[-1]
    n = sharding.mesh.shape[sharding.spec[0]]
    if keys.shape[0] % n:
        raise ValueError(
            f"{keys.shape[0]} particles do not split over the {n} devices of mesh axis "
            f"'{sharding.spec[0]}'; use a multiple of {n}"
        )
    return jax.lax.with_sharding_constraint(keys, sharding)


def global_batch(local_rows: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Assemble a global data array from this process's rows (multi-process runs)."""
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_rows
    )
