"""``stackvi fit``: the main job — fit a model with a variational objective.

::

    stackvi fit [--model FILE.py:FN] [--guide FILE.py:FN | AutoNormal | ...]
                [--data FILE.py:FN] [--objective elbo] [--particles K]
                [--strategy SITE=reinforce ...] [--baseline SITE=ema ...]
                [--steps N] [--lr LR] [--optimizer adam] [--seed S] [--out DIR]

With no arguments (``stackvi`` or ``stackvi fit``) it runs the bundled default:
the VAE of :mod:`stackvi.models.vae` on scikit-learn's binarized digits, which
finishes in about a minute on two CPU cores.

Conventions:

* ``FILE.py:FN`` names a function in a Python file (``pkg.module:FN`` names one
  in an importable module). The file runs once, with its folder on ``sys.path``.
* ``--data FILE.py:FN``: ``FN()`` returns ``(args, kwargs)``; the model and the
  guide are called as ``model(*args, **kwargs)``. Without ``--data`` they are
  called with no arguments (the bundled VAE uses :func:`stackvi.models.vae.digits_data`).
* ``--guide`` is a function or the name of a NumPyro autoguide built on the
  model (``AutoNormal`` when omitted with ``--model``).
* ``--objective`` is the name of an objective constructor in
  :mod:`stackvi.estimators` (``elbo``, ...), called as
  ``ctor(model, guide, num_particles=K)``.
* ``--strategy SITE=NAME`` chooses a gradient strategy for a latent site of the
  guide (``reinforce``, ``reparam``, ...); ``--baseline SITE=ema`` gives that
  site a baseline (:mod:`stackvi.baselines`). Unnamed sites get the default.

Outputs in ``--out`` (default ``runs/<timestamp>``): ``params.pkl`` (a
:class:`stackvi.FitResult`, read it with :func:`stackvi.fit.load`),
``loss.png`` (the objective per step), ``summary.json``, and for the bundled
VAE ``digits.png`` (held-out digits, their reconstructions, and samples).
Bad input ends the job with a one-line error and exit status 2
(``--traceback`` shows the full traceback instead).

>>> args = build_parser().parse_args(["fit", "--strategy", "z=reinforce", "--steps", "50"])
>>> args.strategy, args.steps, args.objective
(['z=reinforce'], 50, 'elbo')
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stackvi.report import format_summary, plot_history, summarize

__all__ = ["main", "build_parser"]

DEFAULT_MODEL = "stackvi.models.vae:model"
DEFAULT_GUIDE = "stackvi.models.vae:guide"
DEFAULT_DATA = "stackvi.models.vae:digits_data"
DEFAULT_STEPS = {"bundled": 20000, "user": 2000}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adamax", "nadam", "radam",
              "lamb", "lion", "yogi", "adabelief", "novograd")


class CLIError(Exception):
    """Bad input: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- parsing

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise CLIError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``stackvi`` command."""
    parser = _Parser(prog="stackvi", description="Programmable variational inference for JAX.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("fit", help="fit a model with a variational objective",
                       description=__doc__.split("::")[0].strip())
    p.add_argument("--model", help=f"FILE.py:FN (default: the bundled VAE, {DEFAULT_MODEL})")
    p.add_argument("--guide", help="FILE.py:FN or a NumPyro autoguide name (AutoNormal, "
                   "AutoDiagonalNormal, AutoDelta, ...); default AutoNormal with --model")
    p.add_argument("--data", help="FILE.py:FN returning (args, kwargs) for model and guide")
    p.add_argument("--objective", default="elbo",
                   help="objective constructor in stackvi.estimators (default: elbo)")
    p.add_argument("--particles", type=int, default=1, help="num_particles (default: 1)")
    p.add_argument("--strategy", action="append", default=[], metavar="SITE=NAME",
                   help="gradient strategy for a guide site, e.g. z=reinforce (repeatable)")
    p.add_argument("--baseline", action="append", default=[], metavar="SITE=NAME",
                   help="baseline for a score-function site, e.g. z=ema (repeatable)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimization steps (default: {DEFAULT_STEPS['bundled']} for the "
                   f"bundled VAE, {DEFAULT_STEPS['user']} otherwise)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--optimizer", default="adam", help=f"optax optimizer: {', '.join(OPTIMIZERS)}")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    p.add_argument("--out", help="output folder (default: runs/<timestamp>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    return parser


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
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
                raise CLIError(f"{flag}: importing '{where}' failed: {_one_line(e)}") from e
            _LOADED[path] = module
        return _LOADED[path]
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise CLIError(f"{flag}: cannot import module '{where}': {_one_line(e)}") from e


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


def make_guide(spec: str, model: Callable) -> Callable:
    if ":" in spec:
        return load_callable(spec, "--guide")
    known = _autoguides()
    if spec not in known:
        raise CLIError(f"--guide: unknown autoguide '{spec}'; give FILE.py:FN or one of "
                       f"{sorted(known)}")
    return known[spec](model)


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
    if "num_particles" in params:
        return ctor(model, guide, num_particles=particles)
    if particles != 1:
        raise CLIError(f"--objective {name} takes no number of particles; drop --particles")
    return ctor(model, guide)


def make_optimizer(name: str, lr: float):
    import optax

    if name not in OPTIMIZERS:
        raise CLIError(f"--optimizer: unknown optimizer '{name}'; known: {list(OPTIMIZERS)}")
    if not lr > 0:
        raise CLIError(f"--lr must be > 0, got {lr}")
    return getattr(optax, name)(lr)


def apply_strategies(guide: Callable, strategy: dict[str, str], baseline: dict[str, str]):
    """Wrap ``guide`` in one ``configure`` handler claiming the named sites."""
    from stackvi import baselines
    from stackvi.handlers import configure
    from stackvi.handlers.strategies import STRATEGIES

    for site, name in strategy.items():
        if name not in STRATEGIES:
            raise CLIError(f"--strategy {site}={name}: unknown strategy '{name}'; known: "
                           f"{sorted(STRATEGIES)}")
    for site, name in baseline.items():
        if site not in strategy:
            raise CLIError(f"--baseline {site}={name}: give the site a score-function strategy "
                           f"too, e.g. --strategy {site}=reinforce")
        if "baseline" not in inspect.signature(STRATEGIES[strategy[site]].__init__).parameters:
            raise CLIError(f"--baseline {site}={name}: strategy '{strategy[site]}' takes no "
                           "baseline (baselines are for score-function strategies: reinforce)")
        try:
            baselines.resolve(name)
        except ValueError as e:
            raise CLIError(f"--baseline {site}={name}: {e}") from e
    if not strategy:
        return guide
    choice = {site: (name, {"baseline": baseline[site]} if site in baseline else {})
              for site, name in strategy.items()}
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


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _out_dir(out: str | None) -> Path:
    if out is not None:
        path = Path(out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, i = Path("runs") / stamp, 1
        while path.exists():
            i += 1
            path = Path("runs") / f"{stamp}-{i}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out: cannot create '{path}': {_one_line(e)}") from e
    return path


# --------------------------------------------------------------------------- the job

def fit_job(a: argparse.Namespace) -> int:
    import jax

    import stackvi as sv
    from stackvi.fit import save

    bundled = a.model is None
    model = load_callable(a.model or DEFAULT_MODEL, "--model")
    if a.guide is None:
        guide_spec = DEFAULT_GUIDE if bundled else "AutoNormal"
    else:
        guide_spec = a.guide
    guide = make_guide(guide_spec, model)
    data_spec = a.data or (DEFAULT_DATA if bundled else None)
    args, kwargs = load_data(data_spec)
    strategy, baseline = _pairs(a.strategy, "--strategy"), _pairs(a.baseline, "--baseline")
    guide = apply_strategies(guide, strategy, baseline)
    objective = make_objective(a.objective, model, guide, a.particles)
    optimizer = make_optimizer(a.optimizer, a.lr)
    steps = a.steps if a.steps is not None else DEFAULT_STEPS["bundled" if bundled else "user"]
    if steps < 1:
        raise CLIError(f"--steps must be >= 1, got {steps}")
    try:
        check_sites(guide, list(strategy), args, kwargs)
    except CLIError:
        raise
    except Exception as e:  # the user's model/guide failed on the data: say so in one line
        raise CLIError(f"running the guide on the data failed: {_one_line(e)}") from e
    out = _out_dir(a.out)

    print(f"stackvi fit: model {a.model or DEFAULT_MODEL}, guide {guide_spec}, "
          f"data {data_spec or '(no arguments)'}, objective {a.objective} "
          f"(particles={a.particles}), {steps} steps of {a.optimizer}(lr={a.lr})"
          + (f", strategies {strategy}" if strategy else "")
          + (f", baselines {baseline}" if baseline else ""), flush=True)
    start = time.perf_counter()
    try:
        result = sv.fit(objective, jax.random.PRNGKey(a.seed), *args, optimizer=optimizer,
                        num_steps=steps, progress=not a.no_progress, **kwargs)
    except (ValueError, KeyError, TypeError, sv.estimators.NonFiniteError) as e:
        if a.traceback:
            raise
        raise CLIError(f"fitting failed: {_one_line(e)}") from e
    wall = time.perf_counter() - start

    save(out / "params.pkl", result)
    files = [out / "params.pkl", out / "loss.png", out / "summary.json"]
    plot_history(result.history, a.objective, out / "loss.png")
    summary = summarize(result.history, wall)
    summary.update(model=a.model or DEFAULT_MODEL, guide=guide_spec, data=data_spec,
                   objective=a.objective, particles=a.particles, strategy=strategy,
                   baseline=baseline, optimizer=a.optimizer, lr=a.lr, seed=a.seed)
    if bundled and data_spec == DEFAULT_DATA:
        from stackvi.models import vae

        summary.update(vae.digits_report(objective, result, kwargs, out / "digits.png", a.seed))
        files.append(out / "digits.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(format_summary(summary, a.objective, files))
    return 0


def load_data(spec: str | None) -> tuple[tuple, dict]:
    if spec is None:
        return (), {}
    fn = load_callable(spec, "--data")
    try:
        out = fn()
    except Exception as e:
        raise CLIError(f"--data: {spec}() failed: {_one_line(e)}") from e
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (tuple, list))
            and isinstance(out[1], dict)):
        raise CLIError(f"--data: {spec}() must return (args, kwargs), a tuple and a dict; got "
                       f"{type(out).__name__}")
    return tuple(out[0]), dict(out[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stackvi`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]  # `stackvi` alone runs the default job
    show_traceback = "--traceback" in argv
    try:
        a = build_parser().parse_args(argv)
        if a.command != "fit":
            raise CLIError("give a command: stackvi fit [options] (see 'stackvi --help')")
        return fit_job(a)
    except CLIError as e:
        if show_traceback:
            raise
        print(f"stackvi fit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stackvi fit: interrupted", file=sys.stderr)
        return 130
