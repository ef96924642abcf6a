"""``stackvi fit``: the main job — fit a model with a variational objective.

::

    stackvi fit [--model FILE.py:FN] [--guide FILE.py:FN | AutoNormal | ...]
                [--data FILE.py:FN] [--objective elbo] [--particles K]
                [--strategy SITE=reinforce ...] [--baseline SITE=ema ...] [--hide SITE ...]
                [--steps N] [--lr LR] [--optimizer adam] [--seed S]
                [--out DIR [--overwrite]] [--checkpoint-every 30s] [--resume DIR]

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
  model (``AutoNormal`` when omitted with ``--model``). An autoguide leaves out
  the discrete sites the model marks for enumeration (``config_enumerate``,
  ``infer={"enumerate": "parallel"}``), which stackvi sums out exactly on the
  model side; ``--hide SITE`` leaves out more.
* ``--objective`` is the name of an objective constructor in
  :mod:`stackvi.estimators` (``elbo``, ...), called as
  ``ctor(model, guide, num_particles=K)``.
* ``--strategy SITE=NAME`` chooses a gradient strategy for a latent site of the
  guide (``reinforce``, ``reparam``, ...), with the strategy's options after a
  colon (``c=unordered_set:k=4``, ``b=gumbel_softmax:temperature=0.3,biased=true``);
  ``--baseline SITE=ema`` gives that site a baseline (:mod:`stackvi.baselines`).
  Unnamed sites get the default.

Outputs in ``--out`` (default: a fresh ``runs/<timestamp>``; a folder holding an
earlier run's results is refused unless ``--overwrite``): ``config.json`` (the
options), ``checkpoint.npz`` (a :class:`stackvi.FitResult`, written atomically
every ``--checkpoint-every`` steps and/or seconds, at the end and on Ctrl-C;
read it with :func:`stackvi.fit.load`), ``loss.png`` (the objective per
step), ``summary.json`` (also for a failed or interrupted run: its
``status`` and ``error``), and for the bundled VAE ``digits.png`` (held-out
digits, their reconstructions, and samples). ``--resume DIR`` continues an
interrupted run in ``DIR`` with its own options (``--steps``, ``--lr`` and
``--checkpoint-every`` may change); with the same options the result equals
the uninterrupted run's bit for bit.

Every failure ends the job with one line on stderr and exit status 2 (a
failure in your model names its file and line; ``--traceback`` shows the full
traceback instead); Ctrl-C saves the checkpoint, says how to resume, and exits
with 130.

>>> args = build_parser().parse_args(["fit", "--strategy", "z=reinforce", "--steps", "50"])
>>> args.strategy, args.steps, args.objective
(['z=reinforce'], 50, 'elbo')
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stackvi.cli_inputs import (
    OPTIMIZERS,
    CLIError,
    apply_strategies,
    check_sites,
    load_callable,
    load_data,
    make_guide,
    make_objective,
    make_optimizer,
    one_line,
    pairs,
    user_frame,
)
from stackvi.report import describe_params, format_summary, plot_history, summarize

__all__ = ["main", "build_parser", "CLIError"]

DEFAULT_MODEL = "stackvi.models.vae:model"
DEFAULT_GUIDE = "stackvi.models.vae:guide"
DEFAULT_DATA = "stackvi.models.vae:digits_data"
DEFAULT_STEPS = {"bundled": 20000, "user": 2000}
CHECKPOINT, CONFIG, SUMMARY = "checkpoint.npz", "config.json", "summary.json"
RESULTS = (CONFIG, CHECKPOINT, SUMMARY, "loss.png", "digits.png", "params.pkl")
RUN_OPTIONS = ("model", "guide", "data", "objective", "particles", "strategy", "baseline",
               "hide", "optimizer", "seed")  # fixed by a run: --resume refuses them
RESUME_MAY_CHANGE = ("steps", "lr", "checkpoint_every")


# --------------------------------------------------------------------------- parsing

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise CLIError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``stackvi`` command."""
    parser = _Parser(prog="stackvi", description="Programmable variational inference for JAX.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("fit", help="fit a model with a variational objective",
                       description=__doc__.split("::")[0].strip(), epilog=_choices(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _problem_args(p)
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimization steps in all (default: {DEFAULT_STEPS['bundled']} for "
                   f"the bundled VAE, {DEFAULT_STEPS['user']} otherwise)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--optimizer", default="adam", help=f"optax optimizer: {', '.join(OPTIMIZERS)}")
    p.add_argument("--out", help="output folder (default: a fresh runs/<timestamp>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out")
    p.add_argument("--checkpoint-every", default="30s", metavar="N|Ts|N,Ts",
                   help="write checkpoint.npz every N steps and/or T seconds (s, m, h); "
                   "default 30s")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted run whose outputs are in DIR")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = sub.add_parser("advise", help="measure every gradient strategy per site and recommend",
                       description="Measure, at the initial parameters, every applicable "
                       "unbiased gradient strategy (and reinforce baseline) on each guide site, "
                       "one site at a time: gradient variance, step time, variance x time "
                       "(stackvi.advise). Prints the table and the recommended --strategy "
                       "options for `stackvi fit`.", epilog=_choices(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _problem_args(a)
    a.add_argument("--keys", type=int, default=128,
                   help="gradient draws per configuration (default: 128)")
    a.add_argument("--repeats", type=int, default=10,
                   help="timed steps per configuration (default: 10)")
    a.add_argument("--sites", nargs="+", metavar="SITE",
                   help="advise on these guide sites only (default: every latent site); the "
                   "others keep their defaults")
    return parser


def _problem_args(p: argparse.ArgumentParser) -> None:
    """Options naming the problem: model, guide, data, objective, strategies."""
    p.add_argument("--model", help=f"FILE.py:FN (default: the bundled VAE, {DEFAULT_MODEL})")
    p.add_argument("--guide", help="FILE.py:FN or a NumPyro autoguide name (AutoNormal, "
                   "AutoDiagonalNormal, AutoDelta, ...); default AutoNormal with --model")
    p.add_argument("--data", help="FILE.py:FN returning (args, kwargs) for model and guide")
    p.add_argument("--objective", default="elbo",
                   help="objective constructor in stackvi.estimators (default: elbo)")
    p.add_argument("--particles", type=int, default=1, help="num_particles (default: 1)")
    p.add_argument("--strategy", action="append", default=[], metavar="SITE=NAME[:OPT=VAL,...]",
                   help="gradient strategy for a guide site, e.g. z=reinforce, "
                        "c=unordered_set:k=4, b=gumbel_softmax:temperature=0.3,biased=true "
                        "(repeatable)")
    p.add_argument("--baseline", action="append", default=[], metavar="SITE=NAME",
                   help="baseline for a score-function site, e.g. z=ema (repeatable)")
    p.add_argument("--hide", action="append", default=[], metavar="SITE",
                   help="leave a model site out of the autoguide (a discrete site the model "
                   "then sums out); sites marked for enumeration are left out anyway "
                   "(repeatable)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")


def _choices() -> str:
    """The registries, for ``--help``: objectives, strategies, baselines."""
    import textwrap

    from stackvi import baselines
    from stackvi.cli_inputs import objective_constructors
    from stackvi.gradients.strategy import STRATEGIES

    rows = (("objectives (--objective)", sorted(objective_constructors())),
            ("strategies (--strategy SITE=NAME)", sorted(STRATEGIES)),
            ("baselines (--baseline SITE=NAME)", baselines.named()),
            ("optimizers (--optimizer)", list(OPTIMIZERS)))
    return "\n".join(textwrap.fill(", ".join(names), 78, initial_indent=f"{title}: ",
                                    subsequent_indent="    ") for title, names in rows)


# --------------------------------------------------------------------------- run folders

def _out_dir(out: str | None, overwrite: bool) -> Path:
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, i = Path("runs") / stamp, 1
        while path.exists():
            i += 1
            path = Path("runs") / f"{stamp}-{i}"
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out: '{path}' is a file, not a folder")
        earlier = [f for f in RESULTS if (path / f).exists()]
        if earlier and not overwrite:
            raise CLIError(f"--out: '{path}' holds an earlier run's results ({', '.join(earlier)})"
                           f"; pass --overwrite to replace them, --resume {path} to continue "
                           "that run, or choose another folder")
        for f in earlier:
            (path / f).unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out: cannot create '{path}': {one_line(e)}") from e
    return path


def _write_json(path: Path, data: dict) -> None:
    from stackvi.checkpoint import atomic_write

    text = (json.dumps(data, indent=2, default=str) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def _resume_options(a: argparse.Namespace, argv: Sequence[str]) -> Path:
    """Fill ``a`` from the ``config.json`` of the run in ``--resume DIR``; that folder."""
    run = Path(a.resume)
    given = {t.split("=", 1)[0][2:].replace("-", "_") for t in argv if t.startswith("--")}
    fixed = sorted(given & {*RUN_OPTIONS, "out", "overwrite"})
    if fixed:
        raise CLIError(f"--resume continues the run in '{run}' with its own options; drop "
                       + ", ".join(f"--{f.replace('_', '-')}" for f in fixed)
                       + " (only --steps, --lr, --checkpoint-every may change)")
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CLIError(f"--resume: '{run}' has no readable {CONFIG} (is it the output folder "
                       f"of stackvi fit?): {one_line(e)}") from e
    if not (run / CHECKPOINT).is_file():
        raise CLIError(f"--resume: '{run}' has no {CHECKPOINT} (the run stopped before its "
                       f"first checkpoint); start it again with --out {run} --overwrite")
    for k in (*RUN_OPTIONS, *RESUME_MAY_CHANGE):
        if k in config and not (k in given and k in RESUME_MAY_CHANGE):
            setattr(a, k, config[k])
    return run


# --------------------------------------------------------------------------- the job

def _problem(a: argparse.Namespace):
    """``(guide, hidden, strategy, baseline, objective, args, kwargs)`` from the options."""
    bundled = a.model is None
    model = load_callable(a.model or DEFAULT_MODEL, "--model")
    if a.guide is None:
        a.guide = DEFAULT_GUIDE if bundled else "AutoNormal"
    a.data = a.data or (DEFAULT_DATA if bundled else None)
    args, kwargs = load_data(a.data)
    guide, hidden = make_guide(a.guide, model, a.hide, args, kwargs)
    strategy, baseline = pairs(a.strategy, "--strategy"), pairs(a.baseline, "--baseline")
    guide = apply_strategies(guide, strategy, baseline)
    objective = make_objective(a.objective, model, guide, a.particles)
    return guide, hidden, strategy, baseline, objective, args, kwargs


def advise_job(a: argparse.Namespace) -> int:
    """``stackvi advise``: the advisor's table and the recommended ``--strategy`` options."""
    import jax

    import stackvi as sv

    *_, objective, args, kwargs = _problem(a)
    key = jax.random.PRNGKey(a.seed)
    params = objective.init(key, *args, **kwargs)
    try:
        advice = sv.advise(objective, params, key, *args, num_keys=a.keys, repeats=a.repeats,
                           progress=lambda s: print(f"stackvi advise: measuring {s}",
                                                    file=sys.stderr, flush=True),
                           sites=a.sites, **kwargs)
    except ValueError as e:
        if str(e).startswith("advise: sites"):
            raise CLIError(str(e)) from None
        raise
    print(advice.table())
    flags = []
    for site, (name, options) in advice.recommended.items():
        rest = ",".join(f"{k}={v}" for k, v in options.items() if k != "baseline")
        flags.append(f"--strategy {site}={name}" + (f":{rest}" if rest else ""))
        if options.get("baseline") is not None:
            flags.append(f"--baseline {site}={options['baseline']}")
    print(f"\nrecommended: stackvi fit {' '.join(flags)}")
    return 0


def fit_job(a: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    run = _resume_options(a, argv) if a.resume else None
    bundled = a.model is None
    guide, hidden, strategy, baseline, objective, args, kwargs = _problem(a)
    optimizer = make_optimizer(a.optimizer, a.lr)
    a.steps = a.steps if a.steps is not None else DEFAULT_STEPS["bundled" if bundled else "user"]
    if a.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {a.steps}")
    try:
        from stackvi.fit import parse_every

        parse_every(a.checkpoint_every)
    except ValueError as e:
        raise CLIError(f"--checkpoint-every: {e}".replace("checkpoint_every: ", "")) from e
    try:
        check_sites(guide, list(strategy), args, kwargs)
    except CLIError:
        raise
    except Exception as e:  # the user's model/guide failed on the data: say so in one line
        raise CLIError(f"running the guide on the data failed: {one_line(e)}{user_frame(e)}"
                       ) from e
    out = run if run is not None else _out_dir(a.out, a.overwrite)
    config = {k: getattr(a, k) for k in (*RUN_OPTIONS, *RESUME_MAY_CHANGE)}
    model_name = a.model or DEFAULT_MODEL
    summary = {"status": "running", **config, "model": model_name, "strategy": strategy,
               "baseline": baseline}
    try:
        _write_json(out / CONFIG, config)
        print(f"stackvi fit: {'resuming ' + str(out) + ': ' if run else ''}model {model_name}, "
              f"guide {a.guide}, data {a.data or '(no arguments)'}, objective {a.objective} "
              f"(particles={a.particles}), {a.steps} steps of {a.optimizer}(lr={a.lr})"
              + (f", strategies {strategy}" if strategy else "")
              + (f", baselines {baseline}" if baseline else "")
              + (f", {hidden} left out of the guide (summed out in the model)" if hidden
                 else "") + f"; outputs in {out}",
              flush=True)
        return _run(a, out, objective, optimizer, args, kwargs, summary, bundled)
    except KeyboardInterrupt as e:
        from stackvi.checkpoint import read_meta

        ckpt = getattr(e, "checkpoint", None)
        if ckpt is None and (out / CHECKPOINT).exists():  # e.g. Ctrl-C while plotting
            ckpt = out / CHECKPOINT
        done = read_meta(ckpt)["step"] if ckpt is not None else 0
        summary.update(status="interrupted", steps_done=done, checkpoint=ckpt,
                       resume=f"stackvi fit --resume {out}" if ckpt else None)
        _write_json(out / SUMMARY, summary)
        print(f"stackvi fit: interrupted after {done} steps; "
              + (f"checkpoint saved in {ckpt}; resume with: stackvi fit --resume {out}" if ckpt
                 else "nothing saved"), file=sys.stderr)
        return 130
    except Exception as e:
        msg = f"fitting failed: {one_line(e)}{user_frame(e)}"
        ckpt = out / CHECKPOINT
        summary.update(status="failed", error=msg, checkpoint=str(ckpt) if ckpt.exists() else None,
                       resume=f"stackvi fit --resume {out}" if ckpt.exists() else None)
        _write_json(out / SUMMARY, summary)
        if a.traceback:
            raise
        raise CLIError(msg + f" (details in {out / SUMMARY})") from e


def _run(a, out: Path, objective, optimizer, args, kwargs, summary: dict, bundled: bool) -> int:
    import jax

    import stackvi as sv
    from stackvi.checkpoint import read_meta

    ckpt = out / CHECKPOINT
    start_step = read_meta(ckpt)["step"] if a.resume else 0
    if a.resume and start_step == a.steps:
        print(f"stackvi fit: the run in {out} is complete ({start_step} steps); give --steps N "
              f"(more than {start_step}) to continue it")
        return 0
    start = time.perf_counter()
    result = sv.fit(objective, jax.random.PRNGKey(a.seed), *args, optimizer=optimizer,
                    num_steps=a.steps, progress=not a.no_progress, checkpoint=ckpt,
                    checkpoint_every=a.checkpoint_every,
                    resume=ckpt if a.resume else None, **kwargs)
    wall = time.perf_counter() - start

    files = [ckpt, out / "loss.png", out / SUMMARY]
    plot_history(result.history, a.objective, out / "loss.png")
    summary.update(summarize(result.history, wall, steps_run=len(result.history) - start_step))
    summary.update(status="done", resumed_from_step=start_step if a.resume else None)
    if bundled and a.data == DEFAULT_DATA:
        from stackvi.models import vae

        summary.update(vae.digits_report(objective, result, kwargs, out / "digits.png", a.seed))
        files.append(out / "digits.png")
    summary["params"] = describe_params(result.params)
    _write_json(out / SUMMARY, summary)
    print(format_summary(summary, a.objective, files))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stackvi`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]  # `stackvi` alone runs the default job
    show_traceback = "--traceback" in argv
    try:
        a = build_parser().parse_args(argv)
        if a.command == "advise":
            return advise_job(a)
        if a.command != "fit":
            raise CLIError("give a command: stackvi fit|advise [options] (see 'stackvi --help')")
        return fit_job(a, argv)
    except KeyboardInterrupt:
        print("stackvi fit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if show_traceback:
            raise
        text = str(e) if isinstance(e, CLIError) else f"{one_line(e)}{user_frame(e)}"
        print(f"stackvi fit: error: {text}", file=sys.stderr)
        return 2
