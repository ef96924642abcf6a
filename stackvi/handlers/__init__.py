"""Effect handlers: NumPyro ``Messenger`` subclasses, usable as context managers and wrappers.

Tracing and scoring: :class:`trace` (NumPyro's), :class:`density`.
Gradient strategies: :class:`reparam`, :class:`reinforce`, :class:`enumerate`,
:class:`mvd`, :class:`disarm`, :class:`arm`, :class:`relax`, :class:`rebar`,
:class:`unordered_set`, :class:`arsm`; biased
(claimed only with ``biased=True``): :class:`gumbel_softmax`, :class:`straight_through`;
:class:`strategies` and :class:`configure` to choose them per site;
:func:`simulate` (run a guide under its strategies).
Marginalization: :class:`smc_marginalize` (a particle filter in place of a
``scan``; :func:`smc_filter` runs one and returns its :class:`SMCResult`).
NumPyro's handlers are re-exported unchanged: ``seed``, ``substitute``,
``replay``, ``condition``, ``block``, ``scale``, ``mask``.
"""

from numpyro.handlers import block, condition, mask, replay, scale, seed, substitute, trace

from stackvi.handlers.arsm import arsm
from stackvi.handlers.density import density, trace_terms
from stackvi.handlers.disarm import arm, disarm
from stackvi.handlers.enumerate import enum_scope, enumerate
from stackvi.handlers.mvd import mvd
from stackvi.handlers.rebar import rebar
from stackvi.handlers.relax import relax
from stackvi.handlers.relaxed import gumbel_softmax, straight_through
from stackvi.handlers.smc import SMCResult, smc_filter, smc_marginalize
from stackvi.handlers.stop import stop_params, stop_samples
from stackvi.handlers.strategies import (
    Strategy,
    configure,
    reinforce,
    reparam,
    simulate,
    strategies,
)
from stackvi.handlers.unordered_set import unordered_set

__all__ = [
    "trace",
    "density",
    "trace_terms",
    "seed",
    "substitute",
    "replay",
    "condition",
    "block",
    "scale",
    "mask",
    "Strategy",
    "reparam",
    "reinforce",
    "strategies",
    "configure",
    "simulate",
    "stop_params",
    "stop_samples",
    "enumerate",
    "mvd",
    "disarm",
    "arm",
    "relax",
    "rebar",
    "unordered_set",
    "arsm",
    "gumbel_softmax",
    "straight_through",
    "enum_scope",
    "smc_marginalize",
    "smc_filter",
    "SMCResult",
]
