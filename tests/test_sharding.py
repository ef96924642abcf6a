"""Scale-out checks: sharded steps equal single-device steps; two processes fit together.

Each check runs in a fresh interpreter because the number of (simulated) CPU
devices is fixed when JAX starts. Values agree to float32 reassociation error:
the sharded plate sum is reduced in a different order, so we allow a few ulps
of the magnitude involved (`rtol=1e-5`), never more.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# The checks run in subprocesses that start JAX with several devices (about a minute):
# the slow stage, not the README's run.
pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scale"
RTOL = 1e-5


def last_json(stdout: str) -> dict:
    # gloo prints connection notes on stdout; our scripts print one JSON line last.
    return json.loads(stdout.strip().splitlines()[-1])


def run(*args, timeout=300):
    out = subprocess.run([sys.executable, *args], cwd=SCRIPTS, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def report():
    return last_json(run("sharded_checks.py"))


def test_four_devices_visible(report):
    assert report["devices"] == 4


@pytest.mark.parametrize("name", ["elbo", "elbo_reinforce", "iwae", "elbo_enumerate"])
def test_sharded_step_matches_single_device(report, name):
    if name not in report:
        pytest.skip(f"objective {name} not available in this build")
    r = report[name]
    assert r["x_sharding"] == "P('data',)"
    assert abs(r["value_sharded"] - r["value_single"]) <= RTOL * abs(r["value_single"])
    assert r["grad_diff"] <= RTOL * r["grad_scale"]
    # The data stays where it is: partial sums are all-reduced, the data never gathered.
    assert r["all_gathers"] == 0
    assert r["all_reduces"] >= 1


def test_particles_sharded(report):
    r = report["particles"]
    assert abs(r["value_sharded"] - r["value_single"]) <= RTOL * abs(r["value_single"])
    assert r["grad_diff"] <= 1e-4
    assert r["all_gathers"] == 0


def test_fit_on_sharded_data_matches(report):
    r = report["fit"]
    assert abs(r["final_sharded"] - r["final_single"]) <= RTOL * abs(r["final_single"])
    assert r["param_diff"] <= 1e-5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_fit_like_one():
    """jax.distributed on localhost with CPU (gloo) collectives."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "multiprocess_fit.py", str(i), "2", str(port)],
                              cwd=SCRIPTS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    multi = last_json(outs[0][0])
    single = last_json(run("multiprocess_fit.py", "0", "1", "0"))
    assert multi["processes"] == 2 and single["processes"] == 1
    assert abs(multi["mz"] - single["mz"]) <= 1e-5
    assert abs(multi["history_tail"] - single["history_tail"]) <= RTOL * abs(single["history_tail"])
