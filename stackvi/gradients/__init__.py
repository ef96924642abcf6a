"""The gradient layer: records of sampled sites, strategy rules, and one surrogate.

Everything that makes an estimator unbiased lives here, in one place that no
program can bypass:

* :mod:`~stackvi.gradients.strategy` — the :class:`Strategy` base class (a
  handler that claims sites *and* the class that owns their gradient rule),
  :func:`register`, :func:`simulate` (run a guide under its strategies);
* :mod:`~stackvi.gradients.records` — :class:`SiteRecord`, the typed record of
  every non-pathwise site a program draws, and :func:`recording`, the one
  context ``Objective`` opens to collect them;
* :mod:`~stackvi.gradients.structure` — plate pooling and upstream terms,
  read off the traces;
* :mod:`~stackvi.gradients.scoring` — the one way objectives score a model
  (:func:`model_density`: model-side discrete latents summed out exactly);
* :mod:`~stackvi.gradients.surrogate` — :func:`surrogate`, whose value is the
  estimate and whose gradient is the estimator, and :class:`Signals`, what a
  rule may ask of it; :mod:`~stackvi.gradients.contract` — exact contractions
  over enumerated axes and branch differences; :mod:`~stackvi.gradients.dice` —
  :func:`any_order_surrogate`, the same estimator in DiCE form, for unbiased
  derivatives of every order (``objective.surrogate``).

For strategies that evaluate costs at other values than the sample:
:mod:`~stackvi.gradients.branches` (``allocate_dim``, ``lay_out``,
``site_term``) and :func:`branch_difference`. A new strategy is one file on
this API; ``docs/strategies.md`` writes one (:mod:`stackvi.handlers.disarm`).
"""

from stackvi.axes import PARTICLES, Axis, branch_axis, enum_axis
from stackvi.gradients.branches import (
    allocate_dim,
    check_plated,
    lay_out,
    plated_term,
    site_term,
)
from stackvi.gradients.contract import (
    branch_costs,
    branch_difference,
    contract,
    select,
    upstream_weights,
)
from stackvi.gradients.records import SiteRecord, current_recorder, recording
from stackvi.gradients.strategy import (
    STRATEGIES,
    Strategy,
    Trace,
    bernoulli_base,
    claim,
    dist_name,
    register,
    require_family,
    simulate,
    unwrapped,
)
from stackvi.gradients.surrogate import Signals, estimate, surrogate

# isort: split
from stackvi.gradients.dice import any_order_surrogate, magic

# isort: split
# Last: scoring needs stackvi.handlers, whose strategies import the names above.
from stackvi.gradients.scoring import model_density, score_model

__all__ = [
    "Axis",
    "PARTICLES",
    "enum_axis",
    "branch_axis",
    "SiteRecord",
    "recording",
    "current_recorder",
    "Strategy",
    "STRATEGIES",
    "register",
    "claim",
    "simulate",
    "Trace",
    "dist_name",
    "require_family",
    "unwrapped",
    "bernoulli_base",
    "score_model",
    "model_density",
    "Signals",
    "surrogate",
    "estimate",
    "any_order_surrogate",
    "magic",
    "allocate_dim",
    "check_plated",
    "lay_out",
    "site_term",
    "plated_term",
    "branch_costs",
    "branch_difference",
    "upstream_weights",
    "contract",
    "select",
]
