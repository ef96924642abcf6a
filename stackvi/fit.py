"""``fit``: maximize an objective with an optax optimizer.

Steps run in compiled chunks (``lax.scan`` under one ``jit``), so per-step
Python overhead vanishes; between chunks a progress bar shows the running
objective. Parameters live unconstrained (as in NumPyro's ``SVI``); the result
holds them both ways. Baseline state (e.g. moving averages) is threaded
through the steps.

>>> import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
>>> from numpyro.distributions import constraints
>>> import stackvi as sv
>>> def model(x):
...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
...     with numpyro.plate("data", x.shape[0]):
...         numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
>>> def guide(x):
...     m = numpyro.param("m", 0.0)
...     s = numpyro.param("s", 1.0, constraint=constraints.positive)
...     numpyro.sample("z", dist.Normal(m, s))
>>> x = jnp.full(4, 2.0)
>>> result = sv.fit(sv.estimators.elbo(model, guide), jax.random.PRNGKey(0), x,
...                 optimizer=optax.adam(0.05), num_steps=1000, progress=False)
>>> round(float(result.params["m"]), 1)   # posterior mean 4 * 2 / 5
1.6
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from stackvi.estimators.core import NonFiniteError, Objective, non_finite_message

__all__ = ["fit", "FitResult", "save", "load"]


class FitResult(NamedTuple):
    params: dict  # constrained: what the model and guide see
    raw_params: dict  # unconstrained: the optimizer's space, for obj.estimate & co.
    opt_state: Any
    baseline_state: dict
    history: np.ndarray  # objective estimate at every step (higher is better)


def _split_static(tree):
    """Separate array leaves (traced) from everything else (closed over, static)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
    dynamic = [x for x, a in zip(leaves, is_array, strict=True) if a]
    static = [None if a else x for x, a in zip(leaves, is_array, strict=True)]

    def merge(dyn):
        it = iter(dyn)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if a else s for a, s in zip(is_array, static, strict=True)]
        )

    return dynamic, merge


def fit(
    objective: Objective,
    rng_key: jax.Array,
    *args,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 1000,
    chunk_size: int | None = None,
    progress: bool = True,
    init_params: dict | None = None,
    checkpoint: str | Path | None = None,
    resume: str | Path | None = None,
    **kwargs,
) -> FitResult:
    """Run ``num_steps`` of stochastic gradient ascent on ``objective``.

    ``init_params`` (unconstrained) overrides ``objective.init``; ``resume``
    loads params, optimizer and baseline state saved by an earlier
    ``checkpoint=`` run and continues from there.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
    init_key, rng_key = jax.random.split(rng_key)
    history: list[np.ndarray] = []
    if resume is not None:
        saved = load(resume)
        params, opt_state, bstate = saved.raw_params, saved.opt_state, saved.baseline_state
        history.append(np.asarray(saved.history))
        # Resuming with the run's own key must not replay the first steps' samples.
        rng_key = jax.random.fold_in(rng_key, len(saved.history))
    else:
        params = init_params if init_params is not None else objective.init(
            init_key, *args, **kwargs)
        opt_state = optimizer.init(params)
        bstate = objective.init_state(params, init_key, *args, **kwargs)

    dynamic, merge = _split_static((args, kwargs))

    def step(carry, key, dyn):
        params, opt_state, bstate = carry
        a, kw = merge(dyn)
        value, grads, bstate = objective.value_and_grad_with_state(params, bstate, key, *a, **kw)
        # optax minimizes; we maximize the objective.
        updates, opt_state = optimizer.update(jax.tree_util.tree_map(jnp.negative, grads),
                                              opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, bstate), value

    @jax.jit
    def run_chunk(carry, keys, dyn):
        return jax.lax.scan(lambda c, k: step(c, k, dyn), carry, keys)

    single_step = jax.jit(step)
    chunk = chunk_size or max(1, min(num_steps, num_steps // 100 or 1))
    keys = jax.random.split(rng_key, num_steps)
    # A weakly typed leaf (numpyro.param("m", 0.0)) turns strong after one update, which
    # would compile run_chunk up to three times: make every leaf strong up front.
    carry = jax.tree_util.tree_map(_strong, (params, opt_state, bstate))
    done = 0
    with tqdm(total=num_steps, disable=not progress, desc=objective.name) as bar:
        while done < num_steps:
            n = min(chunk, num_steps - done)
            new_carry, values = run_chunk(carry, keys[done:done + n], dynamic)
            values = np.asarray(values)
            if not np.all(np.isfinite(values)):
                _raise_non_finite(objective, single_step, carry, keys[done:done + n], values,
                                  dynamic, merge, done)
            carry = new_carry
            history.append(values)
            done += n
            bar.update(n)
            bar.set_postfix({objective.name: f"{values.mean():.4g}"})

    params, opt_state, bstate = carry
    result = FitResult(objective.constrain(params, *args, **kwargs), params, opt_state, bstate,
                       np.concatenate(history))
    if checkpoint is not None:
        save(checkpoint, result)
    return result


def _strong(x):
    if getattr(x, "weak_type", False):
        return jnp.asarray(x, dtype=x.dtype)
    return x


def _raise_non_finite(objective, single_step, carry, keys, values, dynamic, merge, offset):
    bad = int(np.argmax(~np.isfinite(values)))
    for i in range(bad):  # re-run eagerly up to the failing step to name the culprit
        carry, _ = single_step(carry, keys[i], dynamic)
    a, kw = merge(dynamic)
    msg = non_finite_message(objective, carry[0], keys[bad], a, kw)
    raise NonFiniteError(f"step {offset + bad}: {msg}")


def save(path: str | Path, result: FitResult) -> None:
    """Write a :class:`FitResult` (params, optimizer and baseline state, history) to ``path``."""
    host = jax.tree_util.tree_map(np.asarray, tuple(result))
    with open(path, "wb") as f:
        pickle.dump(host, f)


def load(path: str | Path) -> FitResult:
    """Read a :class:`FitResult` written by :func:`save` (arrays as JAX arrays)."""
    with open(path, "rb") as f:
        host = pickle.load(f)
    return FitResult(*jax.tree_util.tree_map(jnp.asarray, host))
