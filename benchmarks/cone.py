"""The noisy cone's table of bounds (DESIGN.md §7, docs/objectives.md).

Trains the mean-field guide with the ELBO and with IWELBO (K = 5), and the
ring guide (``u`` marginalized) with HVI, IWHVI (m = 5) and DIWHVI (n = 5,
m = 5) — each guide with its own objective, Adam with a cosine-decayed step
size — then estimates every bound with fresh samples: mean ± standard error.
A second table evaluates HVI, IWHVI and DIWHVI on one guide (the one IWHVI
trained), where ``HVI ≤ IWHVI ≤ DIWHVI ≤ log p(z)`` must hold.

    python benchmarks/cone.py [--quick] [--write-docs]

``--write-docs`` replaces the section between ``<!-- BEGIN cone -->`` and
``<!-- END cone -->`` of docs/objectives.md (created if missing).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import optax
from _docs import write_section  # noqa: E402  (benchmarks/ is on sys.path)

import stackvi as sv
from stackvi.models import cone

SECTION = "cone"
DOC = Path(__file__).resolve().parents[1] / "docs" / "objectives.md"


def train(obj, steps: int, lr: float, seed: int = 0):
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    res = sv.fit(obj, jax.random.PRNGKey(seed), optimizer=opt, num_steps=steps, progress=False)
    return res


def run(steps: int, samples: int, lr: float) -> tuple[str, list[dict]]:
    objs = cone.objectives()
    labels = list(objs)
    rows, trained = [], {}
    for i, (label, obj) in enumerate(objs.items()):
        t0 = time.perf_counter()
        res = train(obj, steps, lr)
        trained[label] = res.raw_params
        mean, se = cone.bound(obj, res.raw_params, jax.random.PRNGKey(100 + i), samples)
        rows.append({"bound": label, "guide": "mean-field" if i < 2 else "ring (u marginalized)",
                     "mean": mean, "se": se, "seconds": time.perf_counter() - t0,
                     "params": {k: float(v) for k, v in res.params.items()}})
        print(f"{label:28s} {mean:9.4f} ± {se:.4f}   ({rows[-1]['seconds']:.0f} s)", flush=True)

    same = []
    ref = labels[3]  # the IWHVI-trained ring guide and reverse model
    for i in (2, 3, 4):
        mean, se = cone.bound(objs[labels[i]], trained[ref], jax.random.PRNGKey(200 + i), samples)
        same.append({"bound": labels[i], "mean": mean, "se": se})

    exact = cone.LOG_EVIDENCE
    lines = [
        f"Exact log p(z = 5) = {exact:.5f}. {steps} Adam steps per guide (step size {lr}, "
        f"cosine decay), {samples} fresh estimates per bound (mean ± standard error).",
        "",
        "| bound | guide (trained with this bound) | estimate | gap to log p(z) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['bound']} | {r['guide']} | {r['mean']:.4f} ± {r['se']:.4f} | "
                     f"{exact - r['mean']:.4f} |")
    lines += [
        "",
        f"On one guide (the ring and reverse model trained by {ref}):",
        "",
        "| bound | estimate | gap to log p(z) |",
        "|---|---|---|",
    ]
    for r in same:
        lines.append(f"| {r['bound']} | {r['mean']:.4f} ± {r['se']:.4f} | "
                     f"{exact - r['mean']:.4f} |")
    learned = rows[3]["params"]
    lines += ["", "Trained ring guide (IWHVI): " + ", ".join(
        f"{k} = {v:.3f}" for k, v in learned.items()) + "."]
    return "\n".join(lines), rows + same


def write_docs(table: str) -> None:
    write_section(SECTION, table, DOC, title="# Objectives")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and samples")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (300 if args.quick else 4000)
    samples = args.samples or (2000 if args.quick else 20_000)
    table, rows = run(steps, samples, args.lr)
    print()
    print(table)
    below = all(r["mean"] < cone.LOG_EVIDENCE for r in rows)
    print(f"\nevery bound below log p(z): {below}")
    if args.write_docs:
        write_docs(table)
        print(f"wrote section '{SECTION}' of {DOC}")


if __name__ == "__main__":
    main()
