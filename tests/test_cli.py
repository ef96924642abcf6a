"""``stackvi fit``: runs user files and the bundled default, writes its outputs, fails cleanly."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stackvi.cli import main
from stackvi.fit import load

PNG = b"\x89PNG\r\n\x1a\n"

MODEL = textwrap.dedent("""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    def model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        m = numpyro.param("m", 0.0)
        s = numpyro.param("s", 1.0, constraint=constraints.positive)
        numpyro.sample("z", dist.Normal(m, s))

    def data():
        return (jnp.full(4, 2.0),), {}
""")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "normal.py"
    path.write_text(MODEL)
    return path


def user_args(path, *extra):
    return ["fit", "--model", f"{path}:model", "--guide", f"{path}:guide",
            "--data", f"{path}:data", "--no-progress", *extra]


def test_user_model_writes_params_png_summary(user_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(user_args(user_file, "--steps", "20", "--optimizer", "sgd",
                          "--out", str(out))) == 0
    result = load(out / "checkpoint.npz")
    assert len(result.history) == 20 and np.all(np.isfinite(result.history))
    assert sorted(result.params) == ["m", "s"]
    assert (out / "loss.png").read_bytes()[:8] == PNG
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["objective"] == "elbo"
    assert summary["optimizer"] == "sgd"
    printed = capsys.readouterr().out
    assert "elbo:" in printed and "steps/s" in printed and str(out / "checkpoint.npz") in printed
    assert summary["status"] == "done"
    assert json.loads((out / "config.json").read_text())["optimizer"] == "sgd"


def test_fit_reaches_the_exact_posterior(user_file, tmp_path):
    # z | x ~ N(4·2/5, 1/5): the CLI's fit must get there (exact answer, not a stored result).
    out = tmp_path / "run"
    assert main(user_args(user_file, "--steps", "600", "--lr", "0.05", "--particles", "4",
                          "--out", str(out))) == 0
    params = load(out / "checkpoint.npz").params
    assert abs(float(params["m"]) - 1.6) < 0.1
    assert abs(float(params["s"]) - 0.2 ** 0.5) < 0.1


@pytest.mark.slow
def test_autoguide_with_reinforce_and_baseline(user_file, tmp_path):
    out = tmp_path / "run"
    argv = ["fit", "--model", f"{user_file}:model", "--guide", "AutoNormal", "--data",
            f"{user_file}:data", "--strategy", "z=reinforce", "--baseline", "z=ema",
            "--lr", "0.01", "--steps", "20", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == {"z": "reinforce"} and summary["baseline"] == {"z": "ema"}
    assert np.isfinite(summary["final"])


SWITCH = textwrap.dedent("""
    import numpyro
    import numpyro.distributions as dist

    def model():
        b = numpyro.sample("b", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(3.0 * b, 1.0), obs=2.5)

    def guide():
        numpyro.sample("b", dist.Bernoulli(logits=numpyro.param("l", 0.0)))
""")


def test_strategy_options_after_a_colon(tmp_path):
    # p(b=1 | x) = 1 / (1 + exp(-3·2.5 + 4.5)) = σ(3): the biased relaxation at a low
    # temperature and the unbiased relax both move the logit up from 0 in a short run.
    path = tmp_path / "switch.py"
    path.write_text(SWITCH)
    for spec in ("gumbel_softmax:temperature=0.3,biased=true", "relax:hidden=4"):
        out = tmp_path / spec.split(":")[0]
        argv = ["fit", "--model", f"{path}:model", "--guide", f"{path}:guide", "--strategy",
                f"b={spec}", "--particles", "4", "--lr", "0.1", "--steps", "60", "--out",
                str(out), "--no-progress"]
        assert main(argv) == 0, spec
        assert json.loads((out / "summary.json").read_text())["strategy"] == {"b": spec}
        assert float(load(out / "checkpoint.npz").params["l"]) > 1.0, spec


@pytest.mark.slow
def test_default_job_with_fewer_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["--steps", "300", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "stackvi.models.vae:model"
    # The ELBO improves visibly: the last 30 steps beat the first 30 by many of their sds.
    assert summary["final"] - summary["first"] > 10 * summary["final_sd"]
    assert -60.0 < summary["held_out_per_image"] < 0.0
    assert (out / "digits.png").read_bytes()[:8] == PNG
    assert (out / "loss.png").read_bytes()[:8] == PNG


BAD = [
    (["--model", "missing.py:model"], "file 'missing.py' not found"),
    (["--model", "{f}:nomodel"], "has no function 'nomodel'"),
    (["--model", "{f}:model", "--guide", "AutoNothing"], "unknown autoguide 'AutoNothing'"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--objective", "nope"], "unknown objective 'nope'"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--strategy", "z=magic"], "unknown strategy 'magic'"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--strategy", "w=reinforce"], "'w' is not a latent site of the guide"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--strategy", "z"], "expects SITE=NAME"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--strategy", "z=unordered_set:j=2"], "'j=2' is not an option of unordered_set; its "
     "options: k"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--strategy", "z=reparam:k=2"], "not an option of reparam; it takes no options"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--baseline", "z=ema"], "--strategy z=reinforce"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--optimizer", "nope"], "unknown optimizer 'nope'"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--steps", "5"],
     "missing 1 required positional argument"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--objective", "vimco"], "vimco needs num_particles >= 2"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--checkpoint-every", "0"], "--checkpoint-every: give steps"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--steps", "0"], "--steps must be >= 1"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_clear_line(user_file, tmp_path, capsys, argv, message):
    argv = [a.replace("{f}", str(user_file)) for a in argv]
    assert main(["fit", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stackvi fit: error:")
    assert message in err[0]
    if (tmp_path / "run").exists():  # the run started (the model failed in the fit)
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["status"] == "failed" and message in summary["error"]
    else:
        assert "missing 1 required" not in message  # bad options: no run folder at all


def test_python_m_stackvi_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stackvi", "fit", "--model", "missing.py:m"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "stackvi fit: error: --model: file 'missing.py' not found"


BROKEN = MODEL + textwrap.dedent("""
    def broken_model(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        return z / 0 if x.shape[0] > 100 else {}["no such key"]

    def lognormal_model(x):
        numpyro.sample("z", dist.LogNormal(0.0, 1.0))
""")


@pytest.fixture
def broken_file(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    return path


def test_a_failing_model_names_its_file_and_line_and_leaves_a_summary(broken_file, tmp_path,
                                                                       capsys):
    out = tmp_path / "run"
    argv = user_args(broken_file, "--steps", "5", "--out", str(out))
    argv[2] = f"{broken_file}:broken_model"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = BROKEN.splitlines().index('    return z / 0 if x.shape[0] > 100 else {}["no such key"]')
    assert len(err) == 1, err
    assert f"KeyError: 'no such key' (at {broken_file}:{line + 1}, in broken_model)" in err[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "no such key" in summary["error"]
    with pytest.raises(KeyError):  # --traceback: the real exception
        main([*argv[:-1], str(tmp_path / "run2"), "--traceback"])


@pytest.mark.slow
def test_non_finite_run_keeps_its_checkpoint_and_says_where(broken_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = user_args(broken_file, "--steps", "200", "--particles", "8", "--out", str(out))
    argv[2] = f"{broken_file}:lognormal_model"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NonFiniteError: step" in err[0] and "p:z" in err[0]
    assert f"saved in '{out / 'checkpoint.npz'}'" in err[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["checkpoint"] == str(out / "checkpoint.npz")
    assert np.all(np.isfinite(load(out / "checkpoint.npz").history))


def test_out_with_earlier_results_needs_overwrite_and_progress_shows(user_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "loss.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    assert main(user_args(user_file, "--steps", "5", "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run's results (loss.png)" in err and "--overwrite" in err
    assert (out / "loss.png").read_bytes() == b"stale"
    with_bar = user_args(user_file)[:7]  # without --no-progress
    assert main([*with_bar, "--steps", "50", "--out", str(out), "--overwrite"]) == 0
    assert (out / "loss.png").read_bytes()[:8] == PNG and (out / "notes.txt").exists()
    err = capsys.readouterr().err  # the progress bar: speed, elapsed<remaining, objective
    assert ("step/s" in err or "s/step" in err) and "elbo=" in err and "<" in err


class _CtrlC:
    """A progress bar that presses Ctrl-C on its third update (``done``: the steps shown
    before; how many depends on fit's chunking, which never changes the numbers)."""

    done = 0

    def __init__(self, *a, **kw):
        self.n = 0
        type(self).done = kw.get("initial", 0)

    def update(self, n):  # called once the chunk's steps are done: they count
        self.n += 1
        type(self).done += n
        if self.n == 3:
            raise KeyboardInterrupt

    def set_postfix(self, *a, **kw):
        pass

    def close(self):
        pass


@pytest.mark.slow
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(user_file, tmp_path, capsys,
                                                        monkeypatch):
    out, straight = tmp_path / "run", tmp_path / "straight"
    opts = ("--steps", "300", "--lr", "0.05", "--checkpoint-every", "40")
    monkeypatch.setattr(sys.modules["stackvi.fit"], "tqdm", _CtrlC)
    assert main(user_args(user_file, *opts, "--out", str(out))) == 130
    err = capsys.readouterr().err.strip().splitlines()
    stopped = _CtrlC.done
    assert 0 < stopped < 300
    assert err == [f"stackvi fit: interrupted after {stopped} steps; checkpoint saved in "
                   f"{out / 'checkpoint.npz'}; resume with: stackvi fit --resume {out}"]
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    assert main(["fit", "--resume", str(out), "--model", "x.py:m"]) == 2
    assert "drop --model" in capsys.readouterr().err
    assert main(["fit", "--resume", str(out), "--no-progress"]) == 0
    assert main(user_args(user_file, *opts, "--out", str(straight))) == 0
    a, b = load(out / "checkpoint.npz"), load(straight / "checkpoint.npz")
    np.testing.assert_array_equal(a.history, b.history)
    np.testing.assert_array_equal(a.raw_params["m"], b.raw_params["m"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["resumed_from_step"] == stopped
    assert main(["fit", "--resume", str(tmp_path)]) == 2
    assert "has no readable config.json" in capsys.readouterr().err
