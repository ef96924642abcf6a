"""``fit``: maximize an objective with an optax optimizer; checkpoint, resume, stop cleanly.

Steps run in compiled chunks (a ``while_loop`` under one ``jit``), so per-step
Python overhead vanishes; between chunks a progress bar shows steps/s, the
ETA and the running objective. Parameters live unconstrained (as in NumPyro's
``SVI``); the result holds them both ways. Baseline state (e.g. moving
averages) is threaded through the steps.

* **Keys from the absolute step.** Step ``i`` uses ``fold_in(key, i)``, and
  every chunk runs the same compiled loop (a fixed-size buffer, a dynamic
  step count), so chunk boundaries never change the numbers: a run stopped at
  any step and resumed equals, bit for bit, the run that was never stopped.
* **Compiled once.** The loop is cached per objective, optimizer, buffer size
  and static arguments; a second ``fit`` (or a shorter last chunk) reuses it.
  Reuse the same objective and optimizer objects to benefit.
* **Checkpoints** (:mod:`stackvi.checkpoint`): with ``checkpoint=PATH``, every
  ``checkpoint_every`` steps and/or seconds (default ``"30s"``), at the end,
  on Ctrl-C and on a non-finite step, written atomically (``.npz`` + JSON, no
  pickle). ``resume=PATH`` continues to ``num_steps`` *in total*.
* **Non-finite steps** stop the fit with :class:`~stackvi.estimators.NonFiniteError`
  naming the step, the sites or parameters; its ``.result`` (and the
  checkpoint) hold the last good state. Ctrl-C raises :class:`FitInterrupted`
  (a ``KeyboardInterrupt``) with ``.result`` and ``.checkpoint``.

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

import time
import warnings
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from stackvi.checkpoint import (
    DEFAULT_CHECKPOINT_EVERY,
    CheckpointError,
    FitResult,
    load,
    parse_every,
    remove_temporaries,
    restore,
    save,
)
from stackvi.estimators import NonFiniteError, Objective
from stackvi.fit_args import check_args, is_numpyro_optim

__all__ = ["fit", "FitResult", "FitInterrupted", "CheckpointError", "save", "load",
           "parse_every"]

_DEFAULT_OPTIMIZER = optax.adam(1e-3)
_CACHE: OrderedDict = OrderedDict()  # compiled loops, most recent last
_CACHE_SIZE = 16
_clock = time.monotonic  # when checkpoints are due (tests replace it)
CHUNK_SECONDS = 0.2  # a chunk's target length once a step's time is known (progress: 5/s)
TRACES = 0  # how many times a step loop was traced (each trace is one compilation)


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`: ``.result`` is the last complete step's state, ``.checkpoint``
    where it was saved (or ``None``)."""

    def __init__(self, message, result=None, checkpoint=None):
        super().__init__(message)
        self.result, self.checkpoint = result, checkpoint


# --------------------------------------------------------------------------- the compiled loop

def _split_static(tree, close_over=False):
    """Separate array leaves (traced) from everything else (closed over, static).

    With ``close_over`` every leaf is closed over, arrays included (as NumPyro's
    ``SVI.run`` does): the model sees concrete data; arrays enter the cache key
    by identity (the cache entry keeps them alive).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_array = [not close_over and isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
    dynamic = [x for x, a in zip(leaves, is_array, strict=True) if a]
    static = [None if a else x for x, a in zip(leaves, is_array, strict=True)]

    def merge(dyn):
        it = iter(dyn)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if a else s for a, s in zip(is_array, static, strict=True)]
        )

    key = (treedef, tuple((type(s), id(s)) if isinstance(s, (jax.Array, np.ndarray))
                          else (type(s), s) for s in static))
    try:
        hash(key)
    except TypeError:
        key = None  # unhashable static arguments: compile afresh
    return dynamic, merge, key


def _finite(x):
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every float in ``tree`` is finite: one concatenation, one reduction.

    Checked once per chunk, outside the compiled loop: a reduction per leaf inside
    it cost as much XLA compile time as a third of the step itself (the VAE: 5.3 s
    → 7.4 s), and catching the first bad step is only needed when there is one.
    """
    leaves = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.bool_(True)


def _make_loop(objective, optimizer, merge, size):
    def step(carry, key, dyn):
        params, opt_state, bstate = carry
        a, kw = merge(dyn)
        value, grads, bstate = objective.value_and_grad_with_state(params, bstate, key, *a, **kw)
        # optax and numpyro.optim minimize; we maximize the objective.
        loss_grads = jax.tree_util.tree_map(jnp.negative, grads)
        if is_numpyro_optim(optimizer):  # as NumPyro's SVI: the params are the state's
            opt_state = optimizer.update(loss_grads, opt_state, value=-value)
            return value, grads, (optimizer.get_params(opt_state), opt_state, bstate)
        updates, opt_state = optimizer.update(loss_grads, opt_state, params)
        return value, grads, (optax.apply_updates(params, updates), opt_state, bstate)

    def loop(carry, base_key, start, count, dyn):
        """``count`` steps from ``carry`` (no checks inside: see :func:`_last_good`)."""
        global TRACES
        TRACES += 1

        def body(s):
            i, carry, values = s
            value, _, carry = step(carry, jax.random.fold_in(base_key, start + i), dyn)
            return i + 1, carry, values.at[i].set(jnp.asarray(value, values.dtype))

        init = (jnp.int32(0), carry, jnp.full(size, jnp.nan))
        _, carry, values = jax.lax.while_loop(lambda s: s[0] < count, body, init)
        return carry, values

    return jax.jit(loop), step


def _chunk_finite(values, carry) -> bool:
    """Whether a chunk's values (host array) and the state it ended in are all finite."""
    return bool(np.all(np.isfinite(values))) and bool(_all_finite(carry))


def _last_good(loop, carry, base_key, done, n, dynamic):
    """``(steps, carry)``: how many of the chunk's ``n`` steps from ``carry`` (after ``done``
    steps) kept the value and the state finite, and the state after them.

    Only run when a chunk ended non-finite. It steps with the same compiled loop, one
    step per call, so the state it returns is bit for bit the loop's.
    """
    for i in range(n):
        new, values = loop(carry, base_key, jnp.int32(done + i), jnp.int32(1), dynamic)
        if not _chunk_finite(np.asarray(values)[:1], new):
            return i, carry
        carry = new
    return n, carry


def _compiled(objective, optimizer, args, kwargs, size, close_over=False):
    dynamic, merge, static_key = _split_static((args, kwargs), close_over)
    key = None if static_key is None else (id(objective), id(optimizer), size, static_key)
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return dynamic, _CACHE[key][2], _CACHE[key][3], merge
    loop, step = _make_loop(objective, optimizer, merge, size)
    if key is not None:  # the entry keeps objective, optimizer and closed-over arrays alive,
        # so ids stay unique
        _CACHE[key] = (objective, optimizer, loop, step, (args, kwargs) if close_over else None)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return dynamic, loop, step, merge


def _strong(x):
    if getattr(x, "weak_type", False):
        return jnp.asarray(x, dtype=x.dtype)
    return x


# --------------------------------------------------------------------------- fit

def fit(
    objective: Objective,
    rng_key: jax.Array,
    *args,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 1000,
    chunk_size: int | None = None,
    progress: bool = True,
    init_params: dict | None = None,
    init_state: dict | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | str | None = None,
    resume: str | Path | None = None,
    static_args: bool | None = None,
    **kwargs,
) -> FitResult:
    """Run stochastic gradient ascent on ``objective`` until ``num_steps`` steps are done.

    ``init_params`` (unconstrained) overrides ``objective.init``, ``init_state``
    ``objective.init_state`` (baseline states and ``numpyro.mutable`` values, e.g. a
    previous result's ``baseline_state``). ``checkpoint``
    is a file path (``.npz``) written every ``checkpoint_every`` steps (``500``)
    and/or seconds (``"30s"``, ``"500,30s"``; default ``"30s"``), at the end, on
    Ctrl-C and on a non-finite step. ``resume`` loads such a file and continues
    the same run up to ``num_steps`` steps in total; with the same ``rng_key``
    the result is bit for bit that of an uninterrupted run. A checkpoint from
    another objective, model/guide or optimizer is refused.

    ``optimizer``: an optax ``GradientTransformation`` or a ``numpyro.optim``
    optimizer (``numpyro.optim.Adam(1e-3)``), which steps as in NumPyro's ``SVI``.

    ``chunk_size``: steps per call of the compiled loop (between progress updates
    and checks). Default: ``num_steps // 100`` at first, then as many as run in
    about :data:`CHUNK_SECONDS` (at most 256), so a fast model does not pay a
    host round trip every few steps (in one process; across processes every chunk
    is ``num_steps // 100``, so all run the same calls). Chunking never changes
    the numbers.

    ``static_args``: how ``args``/``kwargs`` enter the compiled loop. ``None``
    (default): array arguments are traced (one compilation serves any data of
    the same shapes); if the model needs concrete values (``int(np.max(x))``,
    ``np.unique(x)``), they are closed over as constants instead, as NumPyro's
    ``SVI.run`` does. ``True``: always closed over. ``False``: always traced;
    a model that needs concrete values is an error naming the argument.
    """
    check_args(objective, rng_key, optimizer, num_steps, chunk_size, progress, init_params,
                checkpoint, checkpoint_every, resume, static_args, init_state)
    optimizer = optimizer if optimizer is not None else _DEFAULT_OPTIMIZER
    every_steps, every_s = (None, None) if checkpoint is None else parse_every(
        checkpoint_every if checkpoint_every is not None else DEFAULT_CHECKPOINT_EVERY)
    init_key, base_key = jax.random.split(rng_key)
    if checkpoint is not None:
        remove_temporaries(checkpoint)  # half-written files of a killed earlier run

    history = [np.zeros(0, jnp.zeros(0).dtype)]
    if resume is None:
        params = init_params if init_params is not None else objective.init(
            init_key, *args, **kwargs)
        if init_state is None:
            try:  # traces the program with the arguments closed over
                init_state = objective.init_state(params, init_key, *args, **kwargs)
            except _NEEDS_CONCRETE as e:
                raise _concrete_error(e, objective, None, None, args, kwargs, True) from e
        carry = (params, optimizer.init(params), init_state)
    else:
        fresh = objective.init(init_key, *args, **kwargs)
        like = FitResult({}, fresh, optimizer.init(fresh),
                         objective.init_state(fresh, init_key, *args, **kwargs), None)
        saved, meta, saved_key = restore(resume, like, objective.name)
        if saved_key is not None and not np.array_equal(
                saved_key, np.asarray(jax.random.key_data(rng_key) if jnp.issubdtype(
                    rng_key.dtype, jax.dtypes.prng_key) else rng_key)):
            warnings.warn(f"resume: rng_key differs from the one of the run in '{resume}'; the "
                          f"steps after {meta['step']} draw from the new key", stacklevel=2)
        if meta["step"] > num_steps:
            raise ValueError(f"resume: the checkpoint is at step {meta['step']}, past "
                             f"num_steps={num_steps} (num_steps counts all steps of the run)")
        carry = (saved.raw_params, saved.opt_state, saved.baseline_state)
        history = [np.asarray(saved.history)]
    # A weakly typed leaf (numpyro.param("m", 0.0)) turns strong after one update, which
    # would compile the loop twice: make every leaf strong up front.
    carry = jax.tree_util.tree_map(_strong, carry)

    chunk = chunk_size or max(1, num_steps // 100)
    size = max(256, 1 << (chunk - 1).bit_length())
    close_over = bool(static_args)
    dynamic, loop, step, merge = _compiled(objective, optimizer, args, kwargs, size, close_over)
    # (carry, steps done): replaced whole, so it is consistent whenever Ctrl-C lands;
    # `history` may run one chunk ahead of it and is cut to its length.
    state = (carry, sum(len(h) for h in history))
    saved_at = _clock()

    def result_of(state):
        (p, o, b), done = state
        try:
            constrained = objective.constrain(p, *args, **kwargs)
        except Exception as e:  # e.g. finite but huge params: keep the raw ones, never lose them
            warnings.warn(f"fit: the params after {done} steps cannot be constrained "
                          f"({type(e).__name__}: {e}); result.params is empty, raw_params holds "
                          "them", stacklevel=3)
            constrained = {}
        return FitResult(constrained, p, o, b, np.concatenate(history)[:done], objective)

    def write(state, status, message=None):
        if checkpoint is not None:
            save(checkpoint, result_of(state), objective=objective.name, rng_key=rng_key,
                 info={"status": status, "num_steps": num_steps, "message": message,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return checkpoint

    single_process = jax.process_count() == 1
    bar = tqdm(total=num_steps, initial=state[1], disable=not progress, desc=objective.name,
               unit="step", dynamic_ncols=True)
    try:
        per_step = None
        while state[1] < num_steps:
            done = state[1]
            n = min(chunk, num_steps - done)
            if chunk_size is None and per_step and single_process:
                # ~CHUNK_SECONDS a chunk: few host round trips. Not across processes: each
                # would time its own steps, and their collectives must meet in the same calls.
                n = min(max(n, int(CHUNK_SECONDS / per_step)), size, num_steps - done)
            if every_steps:
                n = min(n, every_steps - done % every_steps)
            if per_step and every_s and single_process:  # well under the checkpoint interval
                n = max(1, min(n, int(every_s / 4 / per_step)))
            t0 = time.perf_counter()
            try:
                new_carry, values = loop(state[0], base_key, jnp.int32(done), jnp.int32(n),
                                         dynamic)
            except _NEEDS_CONCRETE as e:  # raised while tracing: nothing ran yet
                if close_over or static_args is False:
                    raise _concrete_error(e, objective, state[0], base_key, args, kwargs,
                                          static_args) from e
                close_over = True  # as NumPyro's SVI.run: the data closed over, concrete
                dynamic, loop, step, merge = _compiled(objective, optimizer, args, kwargs, size,
                                                       close_over)
                continue
            values = np.asarray(values)[:n]
            if not _chunk_finite(values, new_carry):
                n_ok, good = _last_good(loop, state[0], base_key, done, n, dynamic)
                history.append(values[:n_ok])
                state = (good, done + n_ok)
                _raise_non_finite(objective, step, state, base_key, values[min(n_ok, n - 1)],
                                  dynamic, merge, write, result_of)
            history.append(values)
            state = (new_carry, done + n)
            per_step = (time.perf_counter() - t0) / n
            bar.set_postfix({objective.name: f"{values.mean():.5g}"}, refresh=False)
            bar.update(n)
            if checkpoint is not None and state[1] < num_steps and (
                    (every_steps and state[1] % every_steps == 0)
                    or (every_s and _clock() - saved_at >= every_s)):
                write(state, "running")
                saved_at = _clock()
        write(state, "done")
    except KeyboardInterrupt as e:
        if isinstance(e, FitInterrupted):
            raise
        where = write(state, "interrupted", "interrupted (Ctrl-C)")
        how = (f"saved in '{where}'; resume with fit(..., resume='{where}')" if where else
               "pass checkpoint=PATH to keep it")
        raise FitInterrupted(f"fit interrupted after {state[1]} steps; the state is {how}",
                             result_of(state), where) from None
    finally:
        bar.close()
    return result_of(state)


_NEEDS_CONCRETE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                   jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def _concrete_error(err, objective, carry, base_key, args, kwargs, static_args):
    """The error for a program that needs concrete values, naming the argument if it is one."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    culprits = [] if static_args else _concrete_culprits(objective, carry, base_key, args,
                                                         kwargs)
    if culprits:
        return TypeError(
            f"fit: the model or guide computes in Python on the value of {', '.join(culprits)}, "
            f"which is traced with static_args=False ({type(err).__name__}: {first}); pass "
            "static_args=None (the default) or True to close it over as a constant, as "
            "NumPyro's SVI.run does, or make the computation traceable (jnp, static shapes)")
    return TypeError(
        f"fit: {objective.name} needs a concrete value where only a traced one exists, even with "
        f"the arguments closed over as constants ({type(err).__name__}: {first}). A latent "
        "sample or a param is used as a Python number or NumPy array: keep those in jax.numpy "
        "(e.g. jnp.where instead of `if`), or make the quantity an argument of the model")


def _concrete_culprits(objective, carry, base_key, args, kwargs) -> list[str]:
    """Arguments that, traced alone (the others closed over), make the step fail to trace."""
    names = _argument_names(objective.model, args, kwargs)
    flat, treedef = jax.tree_util.tree_flatten_with_path((args, kwargs))
    out = []
    for i, (path, leaf) in enumerate(flat):
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            continue
        leaves = [x for _, x in flat]

        def one(x, i=i, leaves=leaves):
            a, kw = jax.tree_util.tree_unflatten(treedef, [*leaves[:i], x, *leaves[i + 1:]])
            return objective.value_and_grad_with_state(carry[0], carry[2], base_key, *a, **kw)[0]

        try:
            jax.eval_shape(one, leaf)
        except _NEEDS_CONCRETE:
            out.append(names(path))
        except Exception:  # another failure: not this argument's concreteness
            pass
    return out


def _argument_names(model, args, kwargs):
    """``path -> "argument 'x' (args[1])"``, with the model's parameter names where known."""
    import inspect

    try:
        params = list(inspect.signature(model).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def name(path):
        where, rest = path[0].idx, path[1:]
        key = path[1] if rest else None
        if where == 0:  # args
            i = key.idx
            label = positional[i] if i < len(positional) else None
            base = f"args[{i}]"
        else:
            label = key.key
            base = f"kwargs[{key.key!r}]"
        inner = jax.tree_util.keystr(path[2:]) if len(path) > 2 else ""
        return (f"argument '{label}{inner}' ({base}{inner})" if label is not None
                else f"argument {base}{inner}")

    return name


def _raise_non_finite(objective, step, state, base_key, value, dynamic, merge, write,
                      result_of):
    (params, opt_state, bstate), done = state
    key = jax.random.fold_in(base_key, done)
    try:
        msg = _diagnose(objective, step, (params, opt_state, bstate), key, value, dynamic,
                        merge)
    except Exception as e:  # the diagnosis must not lose the last good state
        msg = (f"{objective.name} or its gradient is not finite; diagnosing it raised "
               f"{type(e).__name__}: {e}")
    where = write(state, "non-finite", msg)
    keep = (f"The last good state (after {done} steps) is saved in '{where}'." if where else
            f"The last good state (after {done} steps) is in this error's .result; pass "
            "checkpoint=PATH to keep it on disk.")
    err = NonFiniteError(f"step {done}: {msg} {keep}")
    err.result, err.checkpoint = result_of(state), where
    raise err


def _diagnose(objective, step, carry, key, value, dynamic, merge) -> str:
    params = carry[0]
    a, kw = merge(dynamic)
    names = [_param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not np.isfinite(value):
        try:
            objective.check_finite(params, key, *a, **kw)
            return f"{objective.name} is not finite ({value})."
        except NonFiniteError as e:
            return str(e)
        except Exception as e:  # e.g. a distribution's argument check on absurd params
            big = max(names, key=lambda n: float(jnp.max(jnp.abs(_leaf(params, n)))), default="")
            return (f"{objective.name} is not finite ({value}); re-running it eagerly raised "
                    f"{type(e).__name__}: {e}" + (f" (largest parameter: {big}; lower the "
                                                  "learning rate?)" if big else ""))
    _, grads, (new_params, _, _) = jax.jit(step)(carry, key, dynamic)  # as in the loop
    bad = [n for n, g in zip(names, jax.tree_util.tree_leaves(grads), strict=False)
           if not bool(_finite(g))]
    if bad:
        sites = _gradient_sites(objective, params, key, a, kw)
        return (f"the gradient of {objective.name} is not finite for parameters {bad} although "
                f"its value ({float(value):.6g}) is"
                + (f"; non-finite gradients come from the log-density terms {sites} (p: model, "
                   f"q: guide)" if sites else "")
                + ". Look for operations with an infinite derivative at these values (sqrt or "
                "log at 0, a boundary of a constraint) or lower the learning rate.")
    out = [n for n, x in zip(names, jax.tree_util.tree_leaves(new_params), strict=False)
           if not bool(_finite(x))]
    return (f"the optimizer's update made parameters {out} non-finite (gradients too large "
            f"for the learning rate? lower it, or clip with optax.clip_by_global_norm).")


def _leaf(params, name):
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if _param_name(path) == name:
            return x
    return jnp.zeros(())


def _param_name(path) -> str:
    """``m`` for ``params["m"]``, ``net$params['w']`` for a leaf inside a module's params."""
    head, rest = path[0], path[1:]
    if isinstance(head, jax.tree_util.DictKey):
        return f"{head.key}{jax.tree_util.keystr(rest)}"
    return jax.tree_util.keystr(path)


def _gradient_sites(objective, params, key, a, kw) -> list[str]:
    """Best effort: log-density terms whose own gradient is non-finite (names like ``q:z``)."""
    try:
        value, _ = objective.run(params, key, *a, **kw)
        terms = list(getattr(value, "terms", ()))[:32]

        def one(p, j):
            v, _ = objective.run(p, key, *a, **kw)
            return jnp.sum(v.terms[j].array)

        out = []
        for j, t in enumerate(terms):
            g = jax.grad(one)(params, j)
            if not all(bool(_finite(x)) for x in jax.tree_util.tree_leaves(g)):
                out.append(t.label)
        return out
    except Exception:  # internals changed, or the program is not differentiable per term
        return []
