"""``stackvi fit`` with NumPyro habits (issue 11): enumerated sites and autoguides, data used
in Python, the fitted params in the summary, the registries in ``--help``."""

import json
import textwrap

import pytest

from stackvi.cli import main
from stackvi.cli_inputs import CLIError
from stackvi.fit import load

MIXTURE = textwrap.dedent("""
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.funsor import config_enumerate

    def model(x):
        n_groups = int(np.max(np.asarray([1, 1]))) + 1   # Python on concrete values
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(n_groups)))
        loc = numpyro.sample("loc", dist.Normal(0.0, 5.0).expand([n_groups]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            c = numpyro.sample("c", dist.Categorical(w), infer={"enumerate": "parallel"})
            numpyro.sample("x", dist.Normal(loc[c], 1.0), obs=x)

    def unmarked(x):
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(2)))
        with numpyro.plate("data", x.shape[0]):
            c = numpyro.sample("c", dist.Categorical(w))
            numpyro.sample("x", dist.Normal(3.0 * c, 1.0), obs=x)

    def data():
        return (np.array([-3.1, -2.9, 3.0, 3.2, 2.8]),), {}
""")


@pytest.fixture
def mixture_file(tmp_path):
    path = tmp_path / "mixture.py"
    path.write_text(MIXTURE)
    return path


@pytest.mark.slow
def test_autoguide_leaves_out_enumerated_sites_and_prints_params(mixture_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--model", f"{mixture_file}:model", "--guide", "AutoNormal",
                 "--data", f"{mixture_file}:data", "--steps", "30", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "['c'] left out of the guide" in printed
    params = load(out / "checkpoint.npz").params
    assert not any(k.startswith("c_") for k in params), sorted(params)
    assert "params (constrained): " in printed and "loc_auto_loc = [" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["params"]["loc_auto_scale"]) == 2
    assert all(v > 0 for v in summary["params"]["loc_auto_scale"])  # constrained: positive


def test_hide_says_so_explicitly_and_unmarked_discrete_sites_are_named(mixture_file, tmp_path,
                                                                        capsys):
    base = ["fit", "--model", f"{mixture_file}:unmarked", "--guide", "AutoNormal",
            "--data", f"{mixture_file}:data", "--steps", "5", "--no-progress"]
    with pytest.raises(CLIError, match=r"sites \['c'\] are discrete.*--hide c"):
        _raise(base + ["--out", str(tmp_path / "a")])
    assert main(base + ["--hide", "c", "--out", str(tmp_path / "b")]) == 0
    with pytest.raises(CLIError, match="--hide: 'nope' is not a latent site"):
        _raise(base + ["--hide", "nope", "--out", str(tmp_path / "c")])


def _raise(argv):
    """Run the job the way ``main`` does, but let the CLIError through."""
    from stackvi.cli import build_parser, fit_job

    a = build_parser().parse_args(argv)
    fit_job(a, argv)


def test_help_lists_objectives_strategies_and_baselines(capsys):
    from stackvi import baselines
    from stackvi.cli_inputs import objective_constructors
    from stackvi.gradients.strategy import STRATEGIES

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in [*objective_constructors(), *STRATEGIES, *baselines.named()]:
        assert name in text, name
    assert "--hide SITE" in text
