"""Command-line strings to objects for ``stackvi fit``: model, guide, data, objective, optimizer.

Every bad input is a :class:`CLIError` naming the flag and what to fix.

>>> make_optimizer("sgd", 0.1).init({})
(EmptyState(), EmptyState())
>>> pairs(["z=reinforce"], "--strategy")
{'z': 'reinforce'}
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLIError", "load_callable", "make_guide", "objective_constructors", "make_objective",
           "make_optimizer", "apply_strategies", "check_sites", "load_data", "one_line", "pairs",
           "user_frame"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adamax", "nadam", "radam",
              "lamb", "lion", "yogi", "adabelief", "novograd")


class CLIError(Exception):
    """Bad input: printed as one line, exit status 2."""


def pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        site, sep, value = item.partition("=")
        if not sep or not site or not value:
            raise CLIError(f"{flag} expects SITE=NAME, got '{item}'")
        if site in out and out[site] != value:
            raise CLIError(f"{flag}: site '{site}' given twice ('{out[site]}' and '{value}')")
        out[site] = value
    return out


# --------------------------------------------------------------------------- loading

_LOADED: dict[Path, Any] = {}


def _load_module(where: str, flag: str):
    if where.endswith(".py") or "/" in where or Path(where).is_file():
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise CLIError(f"{flag}: file '{where}' not found")
        if path not in _LOADED:
            spec = importlib.util.spec_from_file_location(f"_stackvi_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                sys.path.remove(str(path.parent))
                raise CLIError(f"{flag}: importing '{where}' failed: {one_line(e)}"
                               f"{user_frame(e, path)}") from e
            _LOADED[path] = module
        return _LOADED[path]
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise CLIError(f"{flag}: cannot import module '{where}': {one_line(e)}") from e


def load_callable(spec: str, flag: str) -> Callable:
    """``FILE.py:FN`` or ``pkg.module:FN`` -> the function."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise CLIError(f"{flag} expects FILE.py:FUNCTION, got '{spec}'")
    module = _load_module(where, flag)
    fn = getattr(module, name, None)
    if fn is None:
        have = sorted(n for n, v in vars(module).items()
                      if callable(v) and not n.startswith("_") and inspect.isfunction(v))
        raise CLIError(f"{flag}: '{where}' has no function '{name}' (functions there: {have})")
    if not callable(fn):
        raise CLIError(f"{flag}: '{where}:{name}' is not callable")
    return fn


def _autoguides() -> dict[str, type]:
    from numpyro.infer import autoguide

    return {n: getattr(autoguide, n) for n in autoguide.__all__
            if n.startswith("Auto") and n not in ("AutoGuide", "AutoGuideList", "AutoContinuous")}


def make_guide(spec: str, model: Callable, hide: Sequence[str] = (), args=(),
               kwargs=None) -> tuple[Callable, list[str]]:
    """``(guide, hidden sites)``: ``FILE.py:FN``, or an autoguide of ``model`` that leaves out
    the sites the model marks for enumeration (``config_enumerate``,
    ``infer={"enumerate": "parallel"}``; stackvi sums them out on the model side) and
    those named by ``--hide``."""
    if ":" in spec:
        if hide:
            raise CLIError(f"--hide applies to autoguides (--guide AutoNormal & co.); guide "
                           f"'{spec}' is your own function: leave out {list(hide)} there")
        return load_callable(spec, "--guide"), []
    known = _autoguides()
    if spec not in known:
        raise CLIError(f"--guide: unknown autoguide '{spec}'; give FILE.py:FN or one of "
                       f"{sorted(known)}")
    import jax
    from numpyro.handlers import block, seed, trace

    try:
        tr = trace(seed(model, jax.random.PRNGKey(0))).get_trace(*args, **(kwargs or {}))
    except Exception as e:  # the user's model failed on the data: say so in one line
        raise CLIError(f"running the model on the data failed: {one_line(e)}{user_frame(e)}"
                       ) from e
    latent = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    for site in hide:
        if site not in latent:
            raise CLIError(f"--hide: '{site}' is not a latent site of the model (its latent "
                           f"sites: {latent})")
    marked = [n for n in latent if tr[n]["infer"].get("enumerate") == "parallel"]
    hidden = [*marked, *(h for h in hide if h not in marked)]
    discrete = [n for n in latent if n not in hidden and tr[n]["fn"].support.is_discrete]
    if discrete:
        raise CLIError(f"--guide {spec}: the model's latent sites {discrete} are discrete; mark "
                       "them for enumeration (numpyro.contrib.funsor.config_enumerate or "
                       "infer={'enumerate': 'parallel'}) or pass "
                       + " ".join(f"--hide {d}" for d in discrete)
                       + " to sum them out in the model")
    return known[spec](block(model, hide=hidden) if hidden else model), hidden


def objective_constructors() -> dict[str, Callable]:
    """Objective constructors in :mod:`stackvi.estimators`: functions of ``(model, guide, ...)``."""
    from stackvi import estimators

    out = {}
    for name in getattr(estimators, "__all__", dir(estimators)):
        fn = getattr(estimators, name, None)
        if not inspect.isfunction(fn):
            continue
        sig = inspect.signature(fn)
        returns = sig.return_annotation
        if list(sig.parameters)[:2] == ["model", "guide"] and (
                returns is inspect.Signature.empty or "Objective" in str(returns)):
            out[name] = fn
    return out


def make_objective(name: str, model: Callable, guide: Callable, particles: int):
    known = objective_constructors()
    if name not in known:
        raise CLIError(f"--objective: unknown objective '{name}'; known: {sorted(known)}")
    if particles < 1:
        raise CLIError(f"--particles must be >= 1, got {particles}")
    ctor = known[name]
    params = inspect.signature(ctor).parameters
    required = [p for p in list(params)[2:] if params[p].default is inspect.Parameter.empty
                and params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)]
    if required:
        raise CLIError(f"--objective {name} needs {required}, which the command line cannot "
                       f"give: use stackvi.estimators.{name} from Python")
    if "num_particles" not in params and particles != 1:
        raise CLIError(f"--objective {name} takes no number of particles; drop --particles")
    try:
        if "num_particles" in params:
            return ctor(model, guide, num_particles=particles)
        return ctor(model, guide)
    except (ValueError, TypeError) as e:  # e.g. vimco with one particle
        raise CLIError(f"--objective {name} --particles {particles}: {one_line(e, name=False)}"
                       ) from e


def make_optimizer(name: str, lr: float):
    import optax

    if name not in OPTIMIZERS:
        raise CLIError(f"--optimizer: unknown optimizer '{name}'; known: {list(OPTIMIZERS)}")
    if not lr > 0:
        raise CLIError(f"--lr must be > 0, got {lr}")
    return getattr(optax, name)(lr)


# Strategy options the command line cannot give (a handler's own arguments, a callable, and
# the baseline, which has its own flag).
_NOT_OPTIONS = ("self", "fn", "sites", "baseline", "control_variate")


def _option_value(text: str):
    """``true``/``false``, an int, a float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def strategy_options(site: str, spec: str) -> tuple[str, dict]:
    """``NAME[:OPTION=VALUE,...]`` (``--strategy SITE=SPEC``) as ``(name, options)``.

    >>> strategy_options("c", "unordered_set:k=4")
    ('unordered_set', {'k': 4})
    >>> strategy_options("b", "gumbel_softmax:temperature=0.3,biased=true")
    ('gumbel_softmax', {'temperature': 0.3, 'biased': True})
    """
    from stackvi.handlers.strategies import STRATEGIES

    name, _, text = spec.partition(":")
    if name not in STRATEGIES:
        raise CLIError(f"--strategy {site}={spec}: unknown strategy '{name}'; known: "
                       f"{sorted(STRATEGIES)}")
    accepted = [n for n, p in inspect.signature(STRATEGIES[name].__init__).parameters.items()
                if n not in _NOT_OPTIONS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in accepted:
            hint = (f"its options: {', '.join(accepted)} (e.g. {site}={name}:{accepted[0]}=...)"
                    if accepted else "it takes no options")
            raise CLIError(f"--strategy {site}={spec}: '{item}' is not an option of {name}; "
                           f"{hint}")
        options[key] = _option_value(value)
    return name, options


def apply_strategies(guide: Callable, strategy: dict[str, str], baseline: dict[str, str]):
    """Wrap ``guide`` in one ``configure`` handler claiming the named sites.

    ``strategy`` maps a site to ``NAME[:OPTION=VALUE,...]`` (:func:`strategy_options`).
    """
    from stackvi import baselines
    from stackvi.handlers import configure
    from stackvi.handlers.strategies import STRATEGIES

    choice = {site: strategy_options(site, spec) for site, spec in strategy.items()}
    for site, name in baseline.items():
        if site not in strategy:
            raise CLIError(f"--baseline {site}={name}: give the site a score-function strategy "
                           f"too, e.g. --strategy {site}=reinforce")
        if "baseline" not in inspect.signature(STRATEGIES[choice[site][0]].__init__).parameters:
            raise CLIError(f"--baseline {site}={name}: strategy '{choice[site][0]}' takes no "
                           "baseline (baselines are for score-function strategies: reinforce)")
        try:
            baselines.resolve(name)
        except ValueError as e:
            raise CLIError(f"--baseline {site}={name}: {e}") from e
        choice[site][1]["baseline"] = name
    if not strategy:
        return guide
    return configure(guide, lambda msg: choice.get(msg["name"]))


def check_sites(guide: Callable, sites: Sequence[str], args, kwargs) -> None:
    """Every site named by ``--strategy`` must be a latent site of the guide."""
    if not sites:
        return
    import jax
    from numpyro.handlers import seed, trace

    tr = trace(seed(guide, jax.random.PRNGKey(0))).get_trace(*args, **kwargs)
    latent = [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]
    for site in sites:
        if site not in latent:
            raise CLIError(f"--strategy: '{site}' is not a latent site of the guide "
                           f"(its latent sites: {latent})")


def load_data(spec: str | None) -> tuple[tuple, dict]:
    if spec is None:
        return (), {}
    fn = load_callable(spec, "--data")
    try:
        out = fn()
    except Exception as e:
        raise CLIError(f"--data: {spec}() failed: {one_line(e)}{user_frame(e)}") from e
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (tuple, list))
            and isinstance(out[1], dict)):
        raise CLIError(f"--data: {spec}() must return (args, kwargs), a tuple and a dict; got "
                       f"{type(out).__name__}")
    return tuple(out[0]), dict(out[1])




MAX_LINE = 400


def one_line(e: BaseException, name: bool = True) -> str:
    """``Type: message`` on one line, cut at :data:`MAX_LINE` characters."""
    text = " ".join(str(e).split())
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE] + "… (--traceback shows all)"
    if not name:
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def user_frame(e: BaseException, *paths: Path) -> str:
    """`` (at FILE:LINE, in FN)``: the innermost frame in a user file (``--model`` & co.), or ''."""
    files = {str(p) for p in (*_LOADED, *paths)}
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for frame in reversed(traceback.extract_tb(e.__traceback__)):
            if frame.filename in files:
                return f" (at {frame.filename}:{frame.lineno}, in {frame.name})"
        e = e.__cause__ or e.__context__
    return ""
