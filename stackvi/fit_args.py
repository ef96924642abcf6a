"""Validation of :func:`stackvi.fit`'s arguments: one-line errors before any work.

>>> _count("chunk_size", -3)
Traceback (most recent call last):
...
ValueError: chunk_size must be >= 1, got -3
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from stackvi.checkpoint import parse_every
from stackvi.estimators import Objective

__all__ = ["check_args", "is_numpyro_optim"]


def is_numpyro_optim(optimizer) -> bool:
    """A ``numpyro.optim`` optimizer (``init``/``update``/``get_params``), not an optax one."""
    return all(callable(getattr(optimizer, a, None))
               for a in ("init", "update", "get_params", "eval_and_update"))


def _count(name, value, minimum=1, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_key(key):
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return
    if dtype == jnp.uint32 and shape is not None and len(shape) == 1 and shape[0] in (2, 4):
        return
    raise TypeError(f"rng_key must be one PRNG key, e.g. jax.random.PRNGKey(0); got "
                    f"{type(key).__name__} {getattr(key, 'dtype', '')}{list(shape or [])}")


def check_args(objective, rng_key, optimizer, num_steps, chunk_size, progress, init_params,
                checkpoint, checkpoint_every, resume, static_args=None, init_state=None):
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a stackvi.estimators.Objective (e.g. "
                        f"estimators.elbo(model, guide)), got {type(objective).__name__}")
    _check_key(rng_key)
    if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                      and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax GradientTransformation (e.g. "
                        f"optax.adam(1e-3)) or a numpyro.optim optimizer (e.g. "
                        f"numpyro.optim.Adam(1e-3)), got {type(optimizer).__name__}")
    if static_args not in (None, True, False):
        raise TypeError(f"static_args must be None (trace array arguments, close them over if "
                        f"the model needs concrete values), True or False, got {static_args!r}")
    _count("num_steps", num_steps)
    _count("chunk_size", chunk_size, optional=True)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if init_params is not None and not isinstance(init_params, dict):
        raise TypeError(f"init_params must be a dict of unconstrained params (as from "
                        f"objective.init), got {type(init_params).__name__}")
    if init_params is not None and resume is not None:
        raise ValueError("give init_params or resume, not both (resume restores the params)")
    if init_state is not None and not isinstance(init_state, dict):
        raise TypeError(f"init_state must be a dict (as from objective.init_state or a "
                        f"result's baseline_state), got {type(init_state).__name__}")
    if init_state is not None and resume is not None:
        raise ValueError("give init_state or resume, not both (resume restores the state)")
    for name, p in (("checkpoint", checkpoint), ("resume", resume)):
        if p is not None and not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{name} must be a file path, got {type(p).__name__}")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs checkpoint=PATH (where to write)")
    if checkpoint_every is not None:
        parse_every(checkpoint_every)
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"resume: no checkpoint file at '{resume}'")
    if checkpoint is not None:
        folder = Path(checkpoint).parent
        if Path(checkpoint).is_dir():
            raise IsADirectoryError(f"checkpoint: '{checkpoint}' is a folder; give a file path "
                                    f"such as '{Path(checkpoint) / 'fit.npz'}'")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"checkpoint: cannot create folder '{folder}': {e.strerror}") from e
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"checkpoint: folder '{folder}' is not writable")
