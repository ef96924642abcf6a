"""The gallery's index: each example's NumPyro loss and fit settings (for tests and benchmarks).

The example modules themselves are plain NumPyro code; what the tests and the
benchmark need to know about them (which NumPyro ELBO is its counterpart,
how many steps a fit takes, at which learning rate) lives here, in one place.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Entry:
    name: str
    loss: str = "trace"  # NumPyro's counterpart: "trace" Trace_ELBO, "enum" TraceEnum_ELBO
    lr: float = 0.01
    steps: int = 1000  # a full fit (slow tests, benchmark)
    note: str = ""


EXAMPLES = [
    Entry("gmm", loss="enum", lr=0.05, steps=500),
    Entry("annotation", loss="enum", lr=0.05, steps=500),
    Entry("hmm_enum", loss="enum", lr=0.05, steps=500,
          note="NumPyro's TraceEnum_ELBO mis-scores scan-enumerated sites; compared with the "
               "forward algorithm and numpyro.contrib.funsor.log_density instead"),
    Entry("vae", lr=1e-3, steps=500),
    Entry("prodlda", lr=1e-2, steps=500),
    Entry("neutra", lr=1e-2, steps=1000),
    Entry("bnn", lr=1e-2, steps=1000),
    Entry("glm_lkj", lr=2e-2, steps=1000),
    Entry("gp", lr=2e-2, steps=1000),
    Entry("ar2", lr=2e-2, steps=1000),
    Entry("funnel", lr=2e-2, steps=1000),
    Entry("diabetes_subsample", lr=2e-2, steps=1000),
]
BY_NAME = {e.name: e for e in EXAMPLES}


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path, under the module name ``gallery_<name>``."""
    mod_name = f"gallery_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def numpyro_loss(entry: Entry, num_particles: int = 1):
    from numpyro.infer import Trace_ELBO, TraceEnum_ELBO

    cls = TraceEnum_ELBO if entry.loss == "enum" else Trace_ELBO
    return cls(num_particles=num_particles)
