"""Checkpoints of a fit: one ``.npz`` file of arrays with JSON metadata inside.

Safe and atomic:

* **No pickle.** Every array is a plain ``.npy`` member, read with
  ``np.load(allow_pickle=False)``; the metadata (structure, shapes, dtypes,
  step, fingerprint) is a JSON document stored as the bytes of the
  ``__meta__`` member. A file that is a pickle, or an ``.npz`` whose members
  disagree with its metadata, is refused with a :class:`CheckpointError` and
  never executed.
* **Atomic.** :func:`atomic_write` writes a temporary file in the same folder,
  ``fsync``\\ s it, renames it over the target (``os.replace``) and syncs the
  folder: at every moment the path holds either the previous good checkpoint
  or the new one, never half of one.
* **Validated.** The metadata carries a fingerprint of the run (objective
  name, parameter names/shapes/dtypes, the optimizer and baseline state tree
  structures); :func:`restore` refuses a checkpoint written for another model,
  guide, objective or optimizer and says what differs.

>>> import jax.numpy as jnp, numpy as np, tempfile, os
>>> r = FitResult({"m": jnp.ones(2)}, {"m": jnp.ones(2)}, (), {}, np.zeros(3, np.float32))
>>> path = os.path.join(tempfile.mkdtemp(), "fit.npz")
>>> save(path, r)
>>> back = load(path)
>>> back.params["m"].tolist(), back.history.shape, read_meta(path)["step"]
([1.0, 1.0], (3,), 3)
"""

from __future__ import annotations

import json
import numbers
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FitResult", "CheckpointError", "save", "load", "restore", "read_meta",
           "fingerprint", "atomic_write", "remove_temporaries", "parse_every"]

FORMAT, VERSION, META = "stackvi-checkpoint", 1, "__meta__"
DEFAULT_CHECKPOINT_EVERY = "30s"
_PARTS = ("params", "raw_params", "opt_state", "baseline_state")


class FitResult(NamedTuple):
    """What a fit leaves: NumPyro's ``SVIRunResult`` (``params``, ``losses``) and more.

    ``params`` is what ``svi.get_params(state)`` gives; :meth:`evaluate` what
    ``svi.evaluate(state, *args)`` gives, as an objective (higher is better).
    """

    params: dict  # constrained: what the model and guide see
    raw_params: dict  # unconstrained: the optimizer's space, for obj.estimate & co.
    opt_state: Any
    baseline_state: dict  # the objective's state: baselines by site, numpyro.mutable values
    history: np.ndarray  # objective estimate at every step (higher is better)
    objective: Any = None  # the fitted Objective (None for a result read from a file)

    @property
    def losses(self) -> np.ndarray:
        """NumPyro's loss at every step: minus :attr:`history`."""
        return -self.history

    @property
    def mutable_state(self) -> dict | None:
        """The values of the ``numpyro.mutable`` sites (e.g. BatchNorm statistics), or None."""
        return (self.baseline_state or {}).get("numpyro.mutable")

    def evaluate(self, rng_key, *args, **kwargs):
        """An estimate of the objective at the fitted params (with the fitted mutable state),
        for ``args``/``kwargs`` of the model: NumPyro's ``svi.evaluate``, with its sign flipped
        (its loss is minus the ELBO)."""
        if self.objective is None:
            raise ValueError("evaluate: this result has no objective (it was read from a "
                             "file); use objective.estimate_with_state(result.raw_params, "
                             "result.baseline_state, rng_key, *args)")
        return self.objective.estimate_with_state(self.raw_params, self.baseline_state,
                                                  rng_key, *args, **kwargs)


def _file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class CheckpointError(ValueError):
    """A file that is not a valid stackvi checkpoint, or one written for another run."""


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_every(every) -> tuple[int | None, float | None]:
    """``checkpoint_every`` as ``(steps, seconds)``: ``500``, ``"30s"``, ``"5m"``, ``"500,30s"``.

    >>> parse_every("1000,2m"), parse_every(50)
    ((1000, 120.0), (50, None))
    """
    items = every.split(",") if isinstance(every, str) else (
        list(every) if isinstance(every, (list, tuple)) else [every])
    steps = seconds = None
    bad = ValueError(f"checkpoint_every: give steps (500), a time ('30s', '5m', '1h') or both "
                     f"('500,30s'); got {every!r}")
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smh])", item)
            if m:
                if seconds is not None or float(m.group(1)) <= 0:
                    raise bad
                seconds = float(m.group(1)) * _UNITS[m.group(2)]
                continue
            if not item.isdigit():
                raise bad
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < 1 \
                or steps is not None:
            raise bad
        steps = int(item)
    if steps is None and seconds is None:
        raise bad
    return steps, seconds


# --------------------------------------------------------------------------- writing

def atomic_write(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    with suppress(OSError):  # make the rename itself durable (not possible on every OS)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_temporaries(path: str | Path) -> list[Path]:
    """Delete what :func:`atomic_write` left next to ``path`` when a process was killed mid-write.

    Only call it while no other process writes ``path`` (``fit`` does, before its first write).
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for t in stale:
        with suppress(OSError):
            t.unlink()
    return stale


def _treedef_str(tree) -> str:
    # addresses (" at 0x7f...") in a node's repr would differ between processes
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(jax.tree_util.tree_structure(tree)))


def _dtype_name(a: np.ndarray) -> str:
    return a.dtype.name


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def fingerprint(objective_name: str | None, raw_params, opt_state, baseline_state) -> dict:
    """What a resumed run must share with the checkpoint's run."""
    flat, _ = jax.tree_util.tree_flatten_with_path(raw_params)
    return {
        "objective": objective_name,
        "params": {jax.tree_util.keystr(p): [list(np.shape(x)), _dtype_name(_host(x))]
                   for p, x in flat},
        "opt_state": _treedef_str(opt_state),
        "baseline_state": _treedef_str(baseline_state),
    }


def _flatten(part: str, tree, arrays: dict, spec: dict) -> None:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    entries = []
    for i, (path, leaf) in enumerate(leaves):
        a = _host(leaf)
        if a.dtype == object:
            raise TypeError(f"{part}: leaf {jax.tree_util.keystr(path)} is not an array")
        arrays[f"{part}/{i}"] = a
        keys = [k.key if isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str)
                else None for k in path]
        entries.append({"path": jax.tree_util.keystr(path), "keys": keys,
                        "shape": list(a.shape), "dtype": _dtype_name(a)})
    spec[part] = {"treedef": _treedef_str(tree), "leaves": entries}


def pack(result: FitResult, *, objective: str | None = None, rng_key=None,
         info: dict | None = None) -> dict[str, np.ndarray]:
    """The named arrays of a checkpoint file for ``result``, metadata included."""
    arrays: dict[str, np.ndarray] = {}
    spec: dict[str, Any] = {}
    for part in _PARTS:
        _flatten(part, getattr(result, part), arrays, spec)
    history = np.asarray(result.history)
    arrays["history"] = history
    meta = {"format": FORMAT, "version": VERSION, "step": int(history.shape[0]),
            "history_dtype": _dtype_name(history), "trees": spec,
            "fingerprint": fingerprint(objective, result.raw_params, result.opt_state,
                                       result.baseline_state),
            "info": info or {}}
    if rng_key is not None:
        arrays["rng_key"] = _host(rng_key)
        meta["rng_key"] = True
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def save(path: str | Path, result: FitResult, *, objective: str | None = None, rng_key=None,
         info: dict | None = None) -> None:
    """Write ``result`` to ``path`` atomically (``.npz`` arrays + JSON metadata, no pickle)."""
    arrays = pack(result, objective=objective, rng_key=rng_key, info=info)
    atomic_write(path, lambda f: np.savez(f, **arrays))


# --------------------------------------------------------------------------- reading

def _read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays of a checkpoint, checked against each other; nothing executed."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}': {e.strerror or e}") from e
    if head[:1] == b"\x80":
        raise CheckpointError(f"'{path}' is a pickle, not a stackvi checkpoint (.npz); pickles "
                              "are never loaded because they can run code")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"'{path}' is not a readable stackvi checkpoint (.npz): "
                              f"{' '.join(str(e).split())}") from e
    try:
        raw = arrays.pop(META)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"{META} is not a byte string")
        meta = json.loads(raw.tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"no '{FORMAT}' marker")
        if meta.get("version") != VERSION:
            raise ValueError(f"format version {meta.get('version')!r}, this stackvi reads "
                             f"{VERSION}")
        _check_arrays(meta, arrays)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{path}' is not a valid stackvi checkpoint: "
                              f"{type(e).__name__}: {e}") from e
    return meta, arrays


def _check_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> None:
    expected = {"history"} | ({"rng_key"} if meta.get("rng_key") else set())
    for part in _PARTS:
        for i, leaf in enumerate(meta["trees"][part]["leaves"]):
            name = f"{part}/{i}"
            expected.add(name)
            if name not in arrays:
                raise ValueError(f"missing array {name} ({leaf['path']})")
            a = arrays[name]
            if a.dtype.name != leaf["dtype"]:  # bfloat16 & co. come back as raw bytes
                a = arrays[name] = a.view(jnp.dtype(leaf["dtype"]))
            if list(a.shape) != list(leaf["shape"]):
                raise ValueError(f"{part} {leaf['path']}: shape {a.shape}, metadata says "
                                 f"{tuple(leaf['shape'])}")
    extra = sorted(set(arrays) - expected)
    if extra:
        raise ValueError(f"unexpected arrays {extra}")
    h = arrays["history"]
    if h.ndim != 1 or h.shape[0] != meta["step"] or h.dtype.name != meta["history_dtype"]:
        raise ValueError(f"history of shape {h.shape} and dtype {h.dtype} does not match step "
                         f"{meta['step']}")
    for i in range(len(meta["trees"]["raw_params"]["leaves"])):
        a = arrays[f"raw_params/{i}"]
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            raise ValueError("non-finite parameters")


def _rebuild(part: str, meta: dict, arrays: dict):
    """A part as nested dicts (when its paths are all string dict keys), else ``{path: leaf}``."""
    leaves = meta["trees"][part]["leaves"]
    values = [jnp.asarray(arrays[f"{part}/{i}"]) for i in range(len(leaves))]
    if all(leaf["keys"] and None not in leaf["keys"] for leaf in leaves):
        out: dict = {}
        for leaf, v in zip(leaves, values, strict=True):
            d = out
            for k in leaf["keys"][:-1]:
                d = d.setdefault(k, {})
            d[leaf["keys"][-1]] = v
        return out
    return {leaf["path"]: v for leaf, v in zip(leaves, values, strict=True)}


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint (step, fingerprint, ``info``), validated."""
    return _read(path)[0]


def load(path: str | Path) -> FitResult:
    """Read a checkpoint without knowing its run.

    ``params``, ``raw_params`` come back as (nested) dicts of JAX arrays; the
    optimizer and baseline states, whose types only the run knows, as flat
    ``{path: array}`` dicts (:func:`restore` rebuilds them for a resumed fit).
    """
    meta, arrays = _read(path)
    return FitResult(*(_rebuild(p, meta, arrays) for p in _PARTS),
                     np.asarray(arrays["history"]))


def restore(path: str | Path, like: FitResult, objective: str | None = None):
    """``(result, meta, rng_key)`` with the structure of ``like`` (a fresh run's state).

    Raises :class:`CheckpointError` when the checkpoint was written for another
    objective, model/guide (parameters), optimizer or baseline configuration.
    """
    meta, arrays = _read(path)
    saved = meta["fingerprint"]
    here = fingerprint(objective, like.raw_params, like.opt_state, like.baseline_state)
    problems = []
    if objective is not None and saved.get("objective") not in (None, objective):
        problems.append(f"it was written by objective '{saved.get('objective')}', this fit "
                        f"uses '{objective}'")
    if saved["params"] != here["params"]:
        a, b = saved["params"], here["params"]
        diff = [f"missing here: {sorted(set(a) - set(b))}" if set(a) - set(b) else "",
                f"not in the checkpoint: {sorted(set(b) - set(a))}" if set(b) - set(a) else "",
                *(f"{k}: {tuple(a[k][0])} {a[k][1]} there, {tuple(b[k][0])} {b[k][1]} here"
                  for k in sorted(set(a) & set(b)) if a[k] != b[k])]
        problems.append("its parameters are another model's or guide's ("
                        + "; ".join(d for d in diff if d) + ")")
    for part, what in (("opt_state", "optimizer"), ("baseline_state", "baselines")):
        if saved[part] != here[part]:
            problems.append(f"its {part} has another structure (another {what}?): "
                            f"{_short(saved[part])} there, {_short(here[part])} here")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not fit this run: "
                              + "; ".join(problems))
    parts = []
    for part in _PARTS[1:]:
        template = getattr(like, part)
        leaves, treedef = jax.tree_util.tree_flatten(template)
        spec = meta["trees"][part]["leaves"]
        if len(spec) != len(leaves):
            raise CheckpointError(f"checkpoint '{path}': {part} has {len(spec)} arrays, this run "
                                  f"{len(leaves)}")
        new = []
        for i, (t, s) in enumerate(zip(leaves, spec, strict=True)):
            a = arrays[f"{part}/{i}"]
            t_host = _host(t)
            if a.shape != t_host.shape or a.dtype != t_host.dtype:
                raise CheckpointError(
                    f"checkpoint '{path}': {part} {s['path']} is {a.shape} {a.dtype} there, "
                    f"{t_host.shape} {t_host.dtype} here")
            new.append(jnp.asarray(a))
        parts.append(jax.tree_util.tree_unflatten(treedef, new))
    result = FitResult(_rebuild("params", meta, arrays), *parts, np.asarray(arrays["history"]))
    return result, meta, arrays.get("rng_key")


def _short(s: str, n: int = 160) -> str:
    return s if len(s) <= n else s[:n] + "…"
