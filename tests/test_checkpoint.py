"""Checkpoints: SIGKILL at any moment resumes exactly; files are atomic, safe and validated."""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions import constraints

import stackvi as sv
from stackvi import estimators
from stackvi.checkpoint import CheckpointError, FitResult, load, read_meta, save
from stackvi.handlers import reinforce

ROOT = Path(__file__).resolve().parents[1]

JOB = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    from numpyro.distributions import constraints
    import stackvi as sv
    from stackvi.handlers import reinforce

    SLEEP = 0.0  # seconds per step, so that a test can kill the run mid-way

    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        jax.debug.callback(lambda: time.sleep(SLEEP))
        m = numpyro.param("m", 0.0)
        s = numpyro.param("s", 1.0, constraint=constraints.positive)
        numpyro.sample("z", dist.Normal(m, s))

    OBJ = sv.estimators.elbo(model, reinforce(guide, baseline="ema"), num_particles=2)
    OPT = optax.adam(0.02)
    X = jnp.linspace(0.0, 3.0, 5)
    STEPS = 300

    def run(path, resume=None, **kw):
        return sv.fit(OBJ, jax.random.PRNGKey(3), X, optimizer=OPT, num_steps=STEPS,
                      progress=False, checkpoint=path, resume=resume, **kw)

    if __name__ == "__main__":
        SLEEP = float(sys.argv[3])
        run(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2], chunk_size=4,
            checkpoint_every=6)
""")


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"_job_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(cache: Path | None = None):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if cache is not None:  # later subprocesses reuse the first one's compilations
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def _kill_after(argv, ckpt: Path, min_step: int, rng: random.Random) -> int:
    """Start ``argv``; SIGKILL it a random moment after ``ckpt`` reaches ``min_step``."""
    proc = subprocess.Popen(argv, env=_env(ckpt.parent / "jax-cache"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            if ckpt.exists() and read_meta(ckpt)["step"] >= min_step:  # never half-written
                time.sleep(rng.uniform(0.0, 0.05))  # mid-chunk or mid-write
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return read_meta(ckpt)["step"]


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(tuple(a)), jax.tree_util.tree_leaves(tuple(b)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigkill_at_several_moments_then_resume_is_bit_exact(tmp_path):
    """One run, its checkpoint copied at three moments (what a kill then would leave: the
    file is replaced atomically), then SIGKILLed; each resumes to the uninterrupted result."""
    script, ckpt = tmp_path / "job.py", tmp_path / "fit.npz"
    script.write_text(JOB)
    argv = [sys.executable, str(script), str(ckpt), "-", "0.01"]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rng, snapshots = random.Random(0), []
    try:
        for target in (40, 120, 200):
            deadline = time.monotonic() + 120
            while not (ckpt.exists() and read_meta(ckpt)["step"] >= target):
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.05))
            snapshots.append(tmp_path / f"at{target}.npz")
            shutil.copyfile(ckpt, snapshots[-1])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    snapshots.append(ckpt)
    steps = [read_meta(p)["step"] for p in snapshots]  # all readable
    assert steps == sorted(steps) and steps[0] >= 40 and steps[-1] < 300, steps

    job = _import(script)
    straight = job.run(tmp_path / "straight.npz", chunk_size=50)  # other chunk boundaries
    assert straight.history.shape == (300,) and int(straight.opt_state[0].count) == 300
    for path in snapshots:
        _same(job.run(path, resume=path, chunk_size=4, checkpoint_every=10**6), straight)


@pytest.mark.slow
def test_sigkill_chain_of_resumed_runs_is_bit_exact(tmp_path):
    """Kill, resume in a new process, kill again, ... five times; then finish."""
    script, ckpt = tmp_path / "job.py", tmp_path / "fit.npz"
    script.write_text(JOB)
    rng, steps, resume = random.Random(1), [], "-"
    for target in (30, 90, 150, 210, 270):
        argv = [sys.executable, str(script), str(ckpt), resume, "0.01"]
        steps.append(_kill_after(argv, ckpt, target, rng))
        resume = str(ckpt)
    assert steps == sorted(steps) and steps[0] >= 30 and steps[-1] < 300, steps
    job = _import(script)
    _same(job.run(ckpt, resume=ckpt, chunk_size=4, checkpoint_every=6),
          job.run(tmp_path / "straight.npz", chunk_size=50))


WRITER = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("ckpt", sys.argv[2])  # jax, not all stackvi
    ckpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ckpt)
    FitResult, save = ckpt.FitResult, ckpt.save
    big = np.zeros(4_000_000, np.float32)
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        save(sys.argv[1], FitResult({"w": big + i}, {"w": big + i}, (), {},
                                    np.full(i, float(i), np.float32)))
""")


@pytest.mark.parametrize("kills", [2, pytest.param(12, marks=pytest.mark.slow)])
def test_sigkill_during_large_writes_never_leaves_an_unreadable_file(tmp_path, kills):
    script, path = tmp_path / "writer.py", tmp_path / "big.npz"
    script.write_text(WRITER)
    rng, last = random.Random(1), 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, str(script), str(path),
                                 str(ROOT / "stackvi" / "checkpoint.py")], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0.2, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():
            r = load(path)  # the last complete write, whole
            i = len(r.history)
            assert i >= 1 and float(r.params["w"][-1]) == i and float(r.history[0]) == i
            last = max(last, i)
    assert last >= 1  # at least one write completed
    from stackvi.checkpoint import remove_temporaries

    remove_temporaries(path)  # what fit does first: killed writes leave nothing behind
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


# --------------------------------------------------------------------------- unsafe files

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_is_refused_and_never_executed(tmp_path, normal_normal):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "evil.npz"
    crafted.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError, match="pickle"):
        load(crafted)
    obj = estimators.elbo(normal_normal.model, normal_normal.guide)
    with pytest.raises(CheckpointError, match="pickle"):
        sv.fit(obj, jax.random.PRNGKey(0), normal_normal.data, num_steps=2, progress=False,
               resume=crafted)
    # an .npz whose member is a pickled object array
    np.savez(tmp_path / "obj.npz", x=np.array([_Evil(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable"):
        load(tmp_path / "obj.npz")
    assert not marker.exists()
    pickle.loads(crafted.read_bytes())  # the file was a real attack: unpickling runs it
    assert marker.exists()


def _valid(tmp_path) -> Path:
    path = tmp_path / "ok.npz"
    r = FitResult({"m": jnp.ones(3)}, {"m": jnp.zeros(3)}, (jnp.int32(4),), {},
                  np.arange(4, dtype=np.float32))
    save(path, r)
    return path


def _rewrite(path: Path, out: Path, edit) -> Path:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(out, **arrays)
    return out


def _edit_meta(fn):
    def edit(arrays):
        import json

        meta = json.loads(arrays["__meta__"].tobytes())
        fn(meta)
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return edit


TAMPER = {
    "shape in the json": _edit_meta(lambda m: m["trees"]["params"]["leaves"][0].update(
        shape=[4])),
    "format marker": _edit_meta(lambda m: m.update(format="other")),
    "version": _edit_meta(lambda m: m.update(version=99)),
    "step": _edit_meta(lambda m: m.update(step=7)),
    "missing array": lambda a: a.pop("raw_params/0"),
    "extra array": lambda a: a.update(payload=np.zeros(2)),
    "nan params": lambda a: a.update({"raw_params/0": np.full(3, np.nan, np.float32)}),
    "meta not json": lambda a: a.update(__meta__=np.frombuffer(b"{not json", np.uint8)),
    "no meta": lambda a: a.pop("__meta__"),
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_tampered_checkpoints_are_refused(tmp_path, how):
    bad = _rewrite(_valid(tmp_path), tmp_path / "bad.npz", TAMPER[how])
    with pytest.raises(CheckpointError, match="not a valid stackvi checkpoint"):
        load(bad)


def test_truncated_garbage_and_missing_files_are_refused(tmp_path):
    data = _valid(tmp_path).read_bytes()
    for name, content in (("cut.npz", data[: len(data) // 2]), ("junk.npz", b"\x00junk"),
                          ("empty.npz", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="not a readable"):
            load(tmp_path / name)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not an .npz"):
        load(tmp_path / "one.npy")
    with pytest.raises(CheckpointError, match="cannot read"):
        load(tmp_path / "absent.npz")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = _valid(tmp_path)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken)
    r = FitResult({"m": jnp.ones(3)}, {"m": jnp.ones(3)}, (), {}, np.zeros(9, np.float32))
    with pytest.raises(OSError, match="No space"):
        save(path, r)
    assert path.read_bytes() == before and len(load(path).history) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.npz"]  # no temporary left


# --------------------------------------------------------------------------- another run's file

def _guide_w(x):
    numpyro.param("w", jnp.zeros(2))
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0),
                                    numpyro.param("s", 1.0, constraint=constraints.positive)))


def test_a_checkpoint_of_another_run_is_refused(tmp_path, normal_normal):
    nn, path = normal_normal, tmp_path / "run.npz"
    obj, adam = estimators.elbo(nn.model, nn.guide), optax.adam(0.01)
    kw = dict(num_steps=6, progress=False)
    sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=adam, checkpoint=path, **kw)
    others = {
        "parameters": (estimators.elbo(nn.model, _guide_w), adam),
        "optimizer": (obj, optax.sgd(0.01)),
        "objective 'elbo'": (estimators.iwae(nn.model, nn.guide, num_particles=2), adam),
        "baselines": (estimators.elbo(nn.model, reinforce(nn.guide, baseline="ema")), adam),
    }
    for what, (other, opt) in others.items():
        with pytest.raises(CheckpointError, match=f"does not fit this run: .*{what}"):
            sv.fit(other, jax.random.PRNGKey(0), nn.data, optimizer=opt, resume=path, **kw)
    with pytest.raises(ValueError, match="init_params or resume"):
        sv.fit(obj, jax.random.PRNGKey(0), nn.data, resume=path, init_params={}, **kw)
    with pytest.raises(ValueError, match="past num_steps=3"):
        sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=adam, resume=path,
               num_steps=3, progress=False)
    # the same run, finished: resuming returns it unchanged
    again = sv.fit(obj, jax.random.PRNGKey(0), nn.data, optimizer=adam, resume=path, **kw)
    np.testing.assert_array_equal(again.history, load(path).history)
