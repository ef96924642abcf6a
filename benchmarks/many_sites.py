"""How the compiled ELBO gradient grows with the number of score-function sites, vs NumPyro.

The model has ``N`` discrete latent sites written the way users write them,
one ``numpyro.sample`` per site in a Python loop:

* most sites are scalar, ``b{i} ~ Bernoulli(logits=1.5 * b_prev - 0.75)``,
  a Markov chain through the previous scalar site;
* every fourth site (``i % 4 == 3``) is a plate of ``PLATE = 10`` independent
  Bernoullis hanging off the chain, ``b{i} ~ Bernoulli(logits=0.5 * b_prev - 0.25)``;
* each site has its own observed child, ``x{i} ~ Normal(w_i * b{i}, 1)``.

The guide has one learnable logit per site (a ``(PLATE,)`` vector for plate
sites), initialized to 0.1 (away from the ``logits == 0`` sharp edge, see
docs/design.md). Every latent is non-reparameterizable, so stackvi's default
strategy is ``reinforce`` (no baseline) and NumPyro's ``TraceGraph_ELBO``
gives the same score-function estimator (no baseline, Rao-Blackwellized by
its dependency graph).

Both sides compute the same thing, value and gradient of the ELBO surrogate
over the guide params, with one particle:

* stackvi: ``jax.jit(estimators.elbo(model, guide, num_particles=1).value_and_grad)``;
* NumPyro: ``jax.jit(lambda p, k, data: jax.value_and_grad(
  lambda q: -TraceGraph_ELBO().loss(k, q, model, guide, data))(p))``, the loss
  SVI differentiates (all params are unconstrained reals, so the constrained
  and unconstrained spaces coincide).

Each (library, N) runs in a fresh interpreter (JAX's persistent compilation
cache off), which measures:

* **lower**: time of ``jax.jit(f).lower(params, key, data)`` (trace + lower
  to StableHLO), wall clock and process CPU (``time.process_time``, all threads);
* **compile**: time of ``lowered.compile()`` (XLA), wall clock and process CPU.
  On a shared machine the CPU seconds are the steadier number;
* **peak RSS**: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read right after
  compiling (and, for reference, right before lowering: imports + setup);
* **ops**: instructions of the optimized HLO module (``compiled.as_text()``,
  every computation including fusion bodies), all of them and ``add`` only;
  and the StableHLO ops of the lowered module before XLA;
* **step**: median over ``--repeats`` of the mean of ``--calls`` back-to-back
  calls of the compiled step (fresh key each call, ``block_until_ready``
  before the clock is read).

A configuration whose worker process uses more than ``--timeout`` CPU seconds
(``/proc/<pid>/stat``; a wall-clock ``--wall-timeout`` is the backstop) or more
than ``--max-rss-gb`` of resident memory is killed and reported as "> limit";
larger ``N`` of the same library are then skipped. The growth exponent is the least-squares
slope of log(quantity) against log(N) over the completed ``N``, and the local
slope between the two largest completed ``N`` (the small-N end is dominated by
fixed costs, so the local slope is the better guide to the asymptote).

By default the workers import stackvi from the working tree (the commit is
recorded, with "+ uncommitted changes" when ``stackvi/`` differs from it);
``--rev REV`` measures a clean ``git archive`` snapshot of ``REV`` instead
(put first on the workers' ``PYTHONPATH``).

On a loaded machine a sweep can be finished in pieces: ``--json`` saves a
run's rows, ``--reuse FILE[:LIBS]`` takes rows from earlier runs instead of
measuring them again (marked * in the table), ``--compare FILE`` adds the
stackvi rows of a run on another commit as a second series (before/after a
change), ``--deadline HH:MM`` stops measuring at that time and ``--note`` adds
a sentence to the docs section.

    python benchmarks/many_sites.py [--sizes 10,20,40,80,160] [--rev HEAD] [--write-docs]

``--write-docs`` replaces the ``<!-- BEGIN many_sites -->`` section of
docs/benchmarks.md (created if missing). The default sizes are a quick subset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)

SECTION = "many_sites"
PLATE = 10
LIBS = ("stackvi", "numpyro")
LABEL = {"stackvi": "stackvi reinforce", "numpyro": "NumPyro TraceGraph_ELBO"}

# One HLO instruction: ``[ROOT] name = shape opcode(``; the shape may be a tuple.
_HLO_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?:\(.*?\)|\S+)\s+([a-z][\w\-]*)\(",
                     re.MULTILINE)
_STABLEHLO_OP = re.compile(r"\b(?:stablehlo|chlo|mhlo)\.([a-z_]+)")


def hlo_op_counts(text: str) -> tuple[int, int]:
    """``(total, add)`` instruction counts of an HLO module's text."""
    ops = _HLO_OP.findall(text)
    return len(ops), sum(op == "add" for op in ops)


def build(n: int):
    """``(model, guide, data)`` with ``n`` Bernoulli sites (see the module docstring)."""
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    plated = {i for i in range(n) if i % 4 == 3}
    weights = [1.0 + 0.5 * (i % 3) for i in range(n)]
    rng = np.random.default_rng(0)
    data = tuple(
        jnp.asarray(rng.normal(size=(PLATE,) if i in plated else ()) + weights[i] * (i % 2),
                    dtype=jnp.float32)
        for i in range(n))

    def model(data):
        prev = 0.0
        for i, x in enumerate(data):
            if i in plated:
                with numpyro.plate("p", PLATE):
                    b = numpyro.sample(f"b{i}", dist.Bernoulli(logits=0.5 * prev - 0.25))
                    numpyro.sample(f"x{i}", dist.Normal(weights[i] * b, 1.0), obs=x)
            else:
                b = numpyro.sample(f"b{i}", dist.Bernoulli(logits=1.5 * prev - 0.75))
                numpyro.sample(f"x{i}", dist.Normal(weights[i] * b, 1.0), obs=x)
                prev = b

    def guide(data):
        for i in range(len(data)):
            if i in plated:
                logit = numpyro.param(f"q{i}", jnp.full((PLATE,), 0.1))
                with numpyro.plate("p", PLATE):
                    numpyro.sample(f"b{i}", dist.Bernoulli(logits=logit))
            else:
                logit = numpyro.param(f"q{i}", jnp.asarray(0.1))
                numpyro.sample(f"b{i}", dist.Bernoulli(logits=logit))

    return model, guide, data


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(lib: str, n: int, repeats: int, calls: int) -> dict:
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from numpyro.infer import TraceGraph_ELBO

    import stackvi
    from stackvi import estimators

    print(f"stackvi from {stackvi.__file__}", file=sys.stderr)
    model, guide, data = build(n)
    obj = estimators.elbo(model, guide, num_particles=1)
    params = obj.init(jax.random.PRNGKey(0), data)
    if lib == "stackvi":
        step = obj.value_and_grad
    else:
        loss = TraceGraph_ELBO()

        def step(p, k, data):
            return jax.value_and_grad(lambda q: -loss.loss(k, q, model, guide, data))(p)

    key = jax.random.PRNGKey(1)
    load = os.getloadavg()[0]
    rss_setup = _maxrss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = jax.jit(step).lower(params, key, data)
    t_lower, c_lower = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    t_compile, c_compile = time.perf_counter() - t0, time.process_time() - c0
    rss_peak = _maxrss_mb()
    ops, adds = hlo_op_counts(compiled.as_text())
    shlo = _STABLEHLO_OP.findall(lowered.as_text())

    jax.block_until_ready(compiled(params, key, data))
    keys = [jax.random.PRNGKey(i + 2) for i in range(calls)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k in keys:
            out = compiled(params, k, data)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / calls)
    value = float(out[0])
    return {"lib": lib, "n": n, "lower_s": t_lower, "compile_s": t_compile,
            "lower_cpu_s": c_lower, "compile_cpu_s": c_compile,
            "rss_setup_mb": rss_setup, "rss_peak_mb": rss_peak, "ops": ops, "adds": adds,
            "stablehlo_ops": len(shlo), "stablehlo_adds": sum(o == "add" for o in shlo),
            "step_s": statistics.median(times), "value": value, "load": load,
            "params": len(params), "stackvi_file": stackvi.__file__}


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_one(lib: str, n: int, a) -> dict:
    """One configuration in a fresh interpreter, killed past the time or memory limit."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--sizes", str(n),
           "--repeats", str(a.repeats), "--calls", str(a.calls)]
    env = dict(os.environ)
    if a.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [a.src, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    t0, peak, killed, cpu = time.perf_counter(), 0.0, None, 0.0
    while proc.poll() is None:
        peak = max(peak, _rss_gb(proc.pid))
        cpu = max(cpu, _cpu_s(proc.pid))
        if cpu > a.timeout:
            killed = f"> {a.timeout:.0f} s CPU"
        elif time.perf_counter() - t0 > a.wall_timeout:
            killed = f"> {a.wall_timeout:.0f} s wall ({cpu:.0f} s CPU)"
        elif a.deadline and time.time() > a.deadline:
            killed = f"killed at the --deadline ({cpu:.0f} s CPU)"
        elif peak > a.max_rss_gb:
            killed = f"> {a.max_rss_gb:g} GB"
        if killed:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.25)
    stdout, stderr = proc.communicate()
    if killed:
        return {"lib": lib, "n": n, "failed": killed, "wall_s": time.perf_counter() - t0,
                "rss_seen_gb": peak}
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or ["?"]
        return {"lib": lib, "n": n, "failed": f"error: {tail[0][:120]}"}
    return json.loads(stdout.strip().splitlines()[-1])


def slope(ns, ys) -> float | None:
    """Least-squares slope of log y against log n."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys, strict=True) if y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def table(results: dict[tuple[str, int], dict], sizes: list[int],
          series: list[tuple[str, str]] | None = None) -> str:
    """The markdown tables; ``series`` lists ``(results key, label)``, NumPyro last."""
    series = series or [(lib, LABEL[lib]) for lib in LIBS]
    label = dict(series)
    lines = [
        "| N | library | lower wall / CPU (s) | compile wall / CPU (s) | peak RSS (MB) "
        "| HLO ops | HLO adds | StableHLO ops | step (ms) | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for lib, _ in series:
            r = results.get((lib, n))
            if r is None:
                lines.append(f"| {n} | {label[lib]} | skipped (smaller N hit the limit) "
                             "| | | | | | | |")
            elif "failed" in r:
                mark = " *" if r.get("reused") else ""
                seen = (f"{r['rss_seen_gb'] * 1024:.0f} (seen)" if r.get("rss_seen_gb") else "")
                lines.append(f"| {n} | {label[lib]}{mark} | | {r['failed']} | {seen} | | | | | |")
            else:
                mark = " *" if r.get("reused") else ""
                lines.append(
                    f"| {n} | {label[lib]}{mark} | {r['lower_s']:.1f} / {r['lower_cpu_s']:.1f} "
                    f"| {r['compile_s']:.1f} / {r['compile_cpu_s']:.1f} "
                    f"| {r['rss_peak_mb']:.0f} | {r['ops']} | {r['adds']} | {r['stablehlo_ops']} "
                    f"| {r['step_s'] * 1e3:.3f} | {r['load']:.1f} |")
    lines += ["", "Ratios stackvi / NumPyro (same N):", "",
              "| N | stackvi | lower CPU | compile CPU | compile wall | peak RSS | HLO ops "
              "| HLO adds | step |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        p = results.get(("numpyro", n))
        for lib, _ in series:
            s = results.get((lib, n))
            if lib == "numpyro" or not s or not p or "failed" in p:
                continue
            if "failed" in s:
                lines.append(f"| {n} | {label[lib]} | | {s['failed']} vs "
                             f"{p['compile_cpu_s']:.1f} s | | | | | |")
                continue
            lines.append(
                f"| {n} | {label[lib]} | {s['lower_cpu_s'] / p['lower_cpu_s']:.2f} "
                f"| {s['compile_cpu_s'] / p['compile_cpu_s']:.2f} "
                f"| {s['compile_s'] / p['compile_s']:.2f} "
                f"| {s['rss_peak_mb'] / p['rss_peak_mb']:.2f} | {s['ops'] / p['ops']:.2f} "
                f"| {s['adds'] / p['adds']:.2f} | {s['step_s'] / p['step_s']:.2f} |")
    lines += ["", "Growth exponents (slope of log quantity vs log N; all completed N / "
              "between the two largest completed N):", "",
              "| library | N fitted | lower CPU | compile CPU | compile wall "
              "| peak RSS above setup | HLO ops | HLO adds | StableHLO ops | step |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lib, _ in series:
        done = [results[(lib, n)] for n in sizes
                if (lib, n) in results and "failed" not in results[(lib, n)]]
        ns = [r["n"] for r in done]

        def cell(get, ns=ns, done=done):
            ys = [get(r) for r in done]
            whole, local = slope(ns, ys), slope(ns[-2:], ys[-2:])
            return f"{_fmt(whole, '.2f')} / {_fmt(local, '.2f')}"

        lines.append(
            f"| {label[lib]} | {','.join(map(str, ns))} | {cell(lambda r: r['lower_cpu_s'])} "
            f"| {cell(lambda r: r['compile_cpu_s'])} | {cell(lambda r: r['compile_s'])} "
            f"| {cell(lambda r: r['rss_peak_mb'] - r['rss_setup_mb'])} "
            f"| {cell(lambda r: r['ops'])} | {cell(lambda r: r['adds'])} "
            f"| {cell(lambda r: r['stablehlo_ops'])} | {cell(lambda r: r['step_s'])} |")
    return "\n".join(lines)


def section(body: str, commit: str, loads: tuple, a, results: dict) -> str:
    import jax
    import numpyro

    groups: dict[tuple[str, str], list[int]] = {}
    for r in sorted(results.values(), key=lambda r: r["n"]):
        if r.get("reused"):
            groups.setdefault((r["lib"], r["commit"]), []).append(r["n"])
    reused = "" if not groups else (
        " Rows marked * were measured by earlier runs of this script and reused (`--reuse`): "
        + "; ".join(f"{LABEL[lib]} N = {', '.join(map(str, ns))} (commit `{c}`)"
                    for (lib, c), ns in groups.items()) + ".")

    return (
        "## Many score-function sites (compile time and memory)\n\n"
        f"Generated by `{a.command}` on commit `{commit}`; see the script's "
        "docstring for the model and what is measured. N Bernoulli latents (a chain of scalar "
        f"sites, every fourth site a plate of {PLATE}), each with its own Normal observation; "
        "guide with one logit per site; one particle; `jit(value_and_grad)` of the ELBO "
        "surrogate: stackvi's default `reinforce` vs NumPyro's `TraceGraph_ELBO` loss. One "
        "fresh interpreter per row; peak RSS is `ru_maxrss` after compiling (setup alone is "
        "about "
        f"{a.setup_mb:.0f} MB); HLO ops counted in the optimized module (fusion bodies "
        "included), StableHLO ops in the lowered module. A row killed past "
        f"{a.timeout:.0f} CPU seconds or {a.max_rss_gb:g} GB resident reads \"> limit\". "
        f"CPU: {os.cpu_count()} cores, {jax.devices()[0].device_kind}, JAX {jax.__version__}, "
        f"NumPyro {numpyro.__version__}. The machine was shared while this ran, so times are "
        f"noisy: load average (1 min) {loads[0]:.1f} to {loads[1]:.1f} over the rows (each "
        "row's own in the `load` column); op counts are exact." + reused
        + (" " + a.note if a.note else "") + "\n\n" + body + "\n")


def _git(*args) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root,
                          check=True).stdout


def source(rev: str | None) -> tuple[str, str | None]:
    """``(commit label, directory to import stackvi from or None for the working tree)``."""
    if rev is None:
        commit = _git("rev-parse", "--short", "HEAD").strip()
        dirty = _git("status", "--porcelain", "--", "stackvi").strip()
        return (commit + " + uncommitted changes" if dirty else commit), None
    commit = _git("rev-parse", "--short", rev).strip()
    import tempfile

    dest = tempfile.mkdtemp(prefix=f"many_sites_{commit}_")
    archive = subprocess.run(["git", "archive", commit, "stackvi"], capture_output=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__)))).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return commit, dest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[10, 20, 40], help="comma-separated N (default 10,20,40; "
                    "the full sweep is 10,20,40,80,160)")
    ap.add_argument("--libs", type=lambda s: s.split(","), default=list(LIBS))
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="CPU seconds per configuration (the whole worker process)")
    ap.add_argument("--wall-timeout", type=float, default=1800.0,
                    help="wall-clock seconds per configuration (backstop on a loaded machine)")
    ap.add_argument("--max-rss-gb", type=float, default=12.0,
                    help="kill a configuration whose resident memory passes this")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--rev", help="measure a clean snapshot of this commit "
                    "(default: the working tree)")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--reuse", action="append", default=[], metavar="FILE[:LIBS]",
                    help="a --json file of an earlier run (repeatable; later files win): take "
                    "its rows (of LIBS only, e.g. FILE:numpyro) instead of measuring them again; "
                    "marked * in the table. Rows that hit a limit are taken too, crashes not")
    ap.add_argument("--compare", help="a --json file of an earlier run on another commit: its "
                    "stackvi rows are shown as a second stackvi series (e.g. before a change)")
    ap.add_argument("--note", default="", help="a sentence added to the docs section")
    ap.add_argument("--deadline", help="HH:MM UTC: kill the configuration running then and "
                    "skip the rest (the table is still written)")
    ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.deadline:
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        hh, mm = map(int, a.deadline.split(":"))
        a.deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    if a.worker:
        print(json.dumps(worker(a.worker, a.sizes[0], a.repeats, a.calls)))
        return

    commit, a.src = source(a.rev)
    shown = list(sys.argv[1:] if argv is None else argv)
    if a.note and a.note in shown:  # the note is printed after the command, not in it
        shown[shown.index(a.note)] = "..."
    a.command = "python benchmarks/many_sites.py " + shlex.join(shown)
    reuse = {}
    for spec in a.reuse:
        path, _, libs = spec.partition(":")
        with open(path) as f:
            earlier = json.load(f)
        reuse.update({(r["lib"], r["n"]): {**r, "reused": True,
                                           "commit": r.get("commit", earlier["commit"])}
                      for r in earlier["results"]
                      if r["lib"] in (libs.split(",") if libs else LIBS)
                      and not r.get("failed", "").startswith(("error", "not run"))})
    load_start = os.getloadavg()[0]
    results, stopped = {}, set()
    for n in a.sizes:
        for lib in a.libs:
            if lib in stopped:
                continue
            if a.deadline and time.time() > a.deadline and (lib, n) not in reuse:
                results[(lib, n)] = {"lib": lib, "n": n, "failed": "not run (--deadline)",
                                     "commit": commit}
                continue
            if (lib, n) in reuse:
                results[(lib, n)] = reuse[(lib, n)]
                if "failed" in reuse[(lib, n)]:
                    stopped.add(lib)
                print(f"N={n:4d} {lib:8s} reused", file=sys.stderr, flush=True)
                continue
            r = {**run_one(lib, n, a), "commit": commit}
            results[(lib, n)] = r
            if "failed" in r:
                stopped.add(lib)
                print(f"N={n:4d} {lib:8s} {r['failed']}", file=sys.stderr, flush=True)
            else:
                print(f"N={n:4d} {lib:8s} lower {r['lower_s']:7.2f} s  compile "
                      f"{r['compile_s']:7.2f} s (CPU {r['compile_cpu_s']:7.2f} s)  "
                      f"rss {r['rss_peak_mb']:7.0f} MB  ops {r['ops']:6d}"
                      f"  adds {r['adds']:6d}  step {r['step_s'] * 1e3:8.3f} ms  "
                      f"load {r['load']:.1f}", file=sys.stderr, flush=True)
    load_end = os.getloadavg()[0]
    setups = [r["rss_setup_mb"] for r in results.values() if "rss_setup_mb" in r]
    a.setup_mb = statistics.median(setups) if setups else float("nan")
    series = [(lib, LABEL[lib]) for lib in a.libs]
    if a.compare:
        with open(a.compare) as f:
            other = json.load(f)
        key = f"stackvi@{other['commit']}"
        series = [("stackvi", f"stackvi reinforce `{commit.split()[0]}`"),
                  (key, f"stackvi reinforce `{other['commit']}`"), ("numpyro", LABEL["numpyro"])]
        results.update({(key, r["n"]): {**r, "reused": False, "compared": True}
                        for r in other["results"] if r["lib"] == "stackvi" and r["n"] in a.sizes})
        a.note = (f"Rows `stackvi reinforce `{other['commit']}`` are the stackvi rows of that "
                  f"commit's table (`--compare`). " + a.note).strip()
    body = table(results, a.sizes, series)
    row_loads = [r["load"] for r in results.values() if "load" in r] or [load_start, load_end]
    text = section(body, commit, (min(row_loads), max(row_loads)), a, results)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"commit": commit, "loads": [load_start, load_end],
                       "results": [r for r in results.values() if not r.get("compared")]},
                      f, indent=1)
    if a.src:
        import shutil

        shutil.rmtree(a.src, ignore_errors=True)
    if a.write_docs:
        write_section(SECTION, text)
        print(f"wrote the '{SECTION}' section of docs/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
