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
    result = load(out / "params.pkl")
    assert len(result.history) == 20 and np.all(np.isfinite(result.history))
    assert sorted(result.params) == ["m", "s"]
    assert (out / "loss.png").read_bytes()[:8] == PNG
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["objective"] == "elbo"
    assert summary["optimizer"] == "sgd"
    printed = capsys.readouterr().out
    assert "elbo:" in printed and "steps/s" in printed and str(out / "params.pkl") in printed


def test_fit_reaches_the_exact_posterior(user_file, tmp_path):
    # z | x ~ N(4·2/5, 1/5): the CLI's fit must get there (exact answer, not a stored result).
    out = tmp_path / "run"
    assert main(user_args(user_file, "--steps", "600", "--lr", "0.05", "--particles", "4",
                          "--out", str(out))) == 0
    params = load(out / "params.pkl").params
    assert abs(float(params["m"]) - 1.6) < 0.1
    assert abs(float(params["s"]) - 0.2 ** 0.5) < 0.1


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
      "--baseline", "z=ema"], "--strategy z=reinforce"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--data", "{f}:data",
      "--optimizer", "nope"], "unknown optimizer 'nope'"),
    (["--model", "{f}:model", "--guide", "{f}:guide", "--steps", "5"],
     "missing 1 required positional argument"),
    (["--no-such-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_clear_line(user_file, tmp_path, capsys, argv, message):
    argv = [a.replace("{f}", str(user_file)) for a in argv]
    assert main(["fit", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stackvi fit: error:")
    assert message in err[0]


def test_python_m_stackvi_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stackvi", "fit", "--model", "missing.py:m"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "stackvi fit: error: --model: file 'missing.py' not found"
