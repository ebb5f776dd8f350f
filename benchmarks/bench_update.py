"""Time of one topology update over ResNet-50-shaped weights (SET and RigL, 90% and 98%).

The model is ``build_model("resnet-50", in_channels=3, num_classes=1000, image_size=224)``
(about 25.5M sparsifiable weights: every Conv2d and the final Linear). No forward pass is run:
before each timed update, every parameter gets a fresh random gradient (N(0, 1e-3^2), the shape
of a real one) and the SGD-momentum optimizer takes one step with it, so that weights move
between updates, momentum buffers exist (the update zeroes their pruned/grown entries, as in
training) and RigL sees a new dense gradient. Only ``sparsifier.update_topology()`` is timed.

For every (method, sparsity): ``--warmup`` untimed updates, then ``--reps`` timed ones; the
median is compared to the 200 ms target. With ``--compare`` (the default) every timed round
runs one update with the previous selection code ("before": ``np.argpartition`` over every
score in ``top_n``/``bottom_n``, ``torch.isin`` for regrown weights and ``torch.abs`` for
RigL's scores, re-created below) and one with the current engine ("after": sampled-threshold
selection, ``flat_member``, ``fresh_abs``), in
alternating order on the same sparsifier, and reports both medians and their ratio; the two
see the same machine load, so the ratio is meaningful even when the machine is busy. An update during which other processes used more than
``--max-other-cpu`` of the machine is discarded and repeated (at most ``--reps`` times). Then
one extra update runs under cProfile for a per-phase breakdown and the hottest functions, and
one more with each layer timed, for the slowest layers. The last output line is one line of
JSON with every figure.

Usage (from the repository root)::

    python benchmarks/bench_update.py             # full run (about 2-3 minutes on 2 cores)
    python benchmarks/bench_update.py --quick     # smoke run
    python benchmarks/bench_update.py --threads 1 --methods rigl --sparsities 0.98
    python benchmarks/bench_update.py --no-compare    # the current engine only
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    CpuMonitor,
    emit_json,
    machine_info,
    no_gc,
    print_header,
    print_table,
    quantiles,
    set_threads,
    verdict,
)

import itop  # noqa: E402
import itop.criteria  # noqa: E402
import itop.sparsifier  # noqa: E402
from itop.models import build_model  # noqa: E402

TARGET_MS = 200.0
GRAD_STD = 1e-3

# Per-phase breakdown: (label, function name, file-name fragment). Times are cProfile cumulative
# times of those engine functions; names that the engine no longer has simply read 0.
PHASES = [
    ("prune: select_drop", "select_drop", "criteria"),
    ("grow: select_grow", "select_grow", "criteria"),
    ("tracker.record", "record", "tracker"),
    ("optimizer-state reset", "reset_state", "optim_state"),
    ("grow init", "_grow_zero", "sparsifier"),
    ("grow init", "_grow_keep", "sparsifier"),
    ("grow init", "_grow_normal", "sparsifier"),
]


# -- the selection code before the sampled threshold, for the side-by-side comparison ----------


def _before_top_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    size = scores.numel()
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    if n >= size:
        return torch.arange(size)
    v = scores.float().numpy()
    return torch.from_numpy(np.argpartition(v, size - n)[size - n:])


def _before_bottom_n(scores: torch.Tensor, n: int) -> torch.Tensor:
    size = scores.numel()
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    if n >= size:
        return torch.arange(size)
    v = scores.float().numpy()
    return torch.from_numpy(np.argpartition(v, n - 1)[:n])


def _before_gradient_scores(self, ctx) -> torch.Tensor:
    return ctx.require_grad(self.name).abs()


def _before_member(idx: torch.Tensor, members: torch.Tensor, size: int) -> torch.Tensor:
    return torch.isin(idx, members)


# The engine functions each mode replaces: (module, attribute) -> replacement.
CODE_VARIANTS: dict[str, dict[tuple[Any, str], Any]] = {
    "after": {},
    "before": {
        (itop.criteria, "top_n"): _before_top_n,
        (itop.criteria, "bottom_n"): _before_bottom_n,
        (itop.sparsifier, "flat_member"): _before_member,
        (itop.criteria.GradientGrowth, "scores"): _before_gradient_scores,
    },
}


@contextlib.contextmanager
def selection_code(mode: str):
    """Run the engine as it is ("after") or with the previous selection code ("before")."""
    patches = CODE_VARIANTS[mode]
    saved = {key: getattr(*key) for key in patches}
    try:
        for (module, name), fn in patches.items():
            setattr(module, name, fn)
        yield
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)


def fresh_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator) -> None:
    """Random dense gradients for every parameter, then one optimizer step (masks re-applied)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.normal_(0.0, GRAD_STD, generator=gen)
    optimizer.step()


def profile_phases(sp: itop.Sparsifier, drop: float) -> tuple[dict[str, float], float, list[list[Any]]]:
    """One update under cProfile: ms per engine phase, total ms, and the 12 hottest functions."""
    prof = cProfile.Profile()
    prof.enable()
    sp.update_topology(drop)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
    total = max((v[3] for k, v in stats.items() if k[2] == "update_topology"), default=0.0)
    layer_total = sum(v[3] for k, v in stats.items() if k[2] == "_update_layer")
    phases: dict[str, float] = {}
    for label, func, fragment in PHASES:
        t = sum(v[3] for k, v in stats.items() if k[2] == func and fragment in k[0])
        phases[label] = phases.get(label, 0.0) + t * 1e3
    if layer_total:
        phases["rest of _update_layer"] = max(0.0, layer_total * 1e3 - sum(phases.values()))
    phases["outside the layer loop"] = max(0.0, (total - layer_total) * 1e3) if layer_total else total * 1e3
    hot = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    hottest = [
        [f"{os.path.basename(k[0])}:{k[1]}({k[2]})" if k[0] != "~" else k[2], v[1],
         round(v[2] * 1e3, 2), round(v[3] * 1e3, 2)]
        for k, v in hot
    ]
    return phases, total * 1e3, hottest


def per_layer_times(sp: itop.Sparsifier, drop: float) -> list[dict[str, Any]]:
    """One update with every layer's share timed (through the engine's per-layer method)."""
    original = getattr(sp, "_update_layer", None)
    if original is None:
        return []
    times: list[dict[str, Any]] = []

    def timed_layer(layer, *args, **kwargs):
        # Signature-agnostic (the engine's private method may change); the first argument after
        # the layer is the number of weights the layer drops.
        t0 = time.perf_counter()
        out = original(layer, *args, **kwargs)
        n = args[0] if args and isinstance(args[0], int) else -1
        times.append({"layer": layer.name, "numel": int(layer.numel), "active": int(layer.count),
                      "changed": int(n), "ms": (time.perf_counter() - t0) * 1e3})
        return out

    sp._update_layer = timed_layer
    try:
        sp.update_topology(drop)
    finally:
        del sp._update_layer
    return sorted(times, key=lambda r: r["ms"], reverse=True)


def run_config(model, init_state, method: str, sparsity: float, args, gen) -> dict[str, Any]:
    model.load_state_dict(init_state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.build(method, model, optimizer, sparsity=sparsity, update_interval=100,
                    total_steps=10**6, seed=args.seed)
    t_build = time.perf_counter()
    fresh_gradients(model, optimizer, gen)
    for _ in range(args.warmup):
        fresh_gradients(model, optimizer, gen)
        sp.update_topology(args.drop_fraction)
    modes = ["before", "after"] if args.compare else ["after"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    engine_s: list[float] = []
    other: list[float] = []
    rejected = 0
    rounds = 0
    with no_gc():
        while len(times["after"]) < args.reps:
            # Alternate which mode goes first, so neither always follows the other.
            order = modes if rounds % 2 == 0 else modes[::-1]
            rounds += 1
            got: dict[str, float] = {}
            fracs = []
            for mode in order:
                fresh_gradients(model, optimizer, gen)
                monitor = CpuMonitor()
                with selection_code(mode):
                    t0 = time.perf_counter()
                    record = sp.update_topology(args.drop_fraction)
                    got[mode] = time.perf_counter() - t0
                if mode == "after":
                    engine_s.append(float(record["seconds"]))
                f = monitor.fraction()
                if f is not None:
                    fracs.append(f)
            frac = max(fracs) if fracs else None
            if frac is not None and frac > args.max_other_cpu and rejected < args.reps:
                rejected += 1
                continue
            for mode, dt in got.items():
                times[mode].append(dt)
            if frac is not None:
                other.append(frac)
    wall = times["after"]
    engine = engine_s
    def uncontended(fn):
        # The diagnostic updates are repeated (a few times at most) while the machine is busy.
        for _ in range(args.reps + 1):
            fresh_gradients(model, optimizer, gen)
            monitor = CpuMonitor()
            out = fn(sp, args.drop_fraction)
            frac = monitor.fraction()
            if frac is None or frac <= args.max_other_cpu:
                break
        return out

    phases, profiled_ms, hottest = uncontended(profile_phases)
    layers = uncontended(per_layer_times)
    changed = int(record["dropped"])
    sp.finalize()
    w = quantiles(wall)
    compare = {}
    if args.compare:
        b = quantiles(times["before"])
        paired = [x / y for x, y in zip(times["before"], times["after"], strict=True)]
        compare = {
            "before_median_ms": round(b[1] * 1e3, 2),
            "before_iqr_ms": [round(b[0] * 1e3, 2), round(b[2] * 1e3, 2)],
            "speedup": round(b[1] / w[1], 3),
            "paired_speedup_median": round(quantiles(paired)[1], 3),
            "paired_speedup_iqr": [round(q, 3) for q in quantiles(paired)[::2]],
        }
    return {
        "method": method,
        "sparsity": sparsity,
        "drop_fraction": args.drop_fraction,
        "weights": sp.num_weights(),
        "active": sp.num_active(),
        "changed_per_update": changed,
        "median_ms": round(w[1] * 1e3, 2),
        "iqr_ms": [round(w[0] * 1e3, 2), round(w[2] * 1e3, 2)],
        "min_ms": round(min(wall) * 1e3, 2),
        "max_ms": round(max(wall) * 1e3, 2),
        "engine_seconds_median_ms": round(quantiles(engine)[1] * 1e3, 2),
        **compare,
        "reps": len(wall),
        "rejected_reps": rejected,
        "other_cpu_median": round(quantiles(other)[1], 4) if other else None,
        "target_ms": TARGET_MS,
        "verdict": verdict(w[1] * 1e3, TARGET_MS),
        "profiled_ms": round(profiled_ms, 2),
        "phases_ms": {k: round(v, 2) for k, v in phases.items()},
        "hottest": hottest,
        "slowest_layers": [{**r, "ms": round(r["ms"], 2)} for r in layers[: args.top_layers]],
        "config_s": round(time.perf_counter() - t_build, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Median time of one itop topology update over ResNet-50-shaped weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--methods", nargs="+", default=["set", "rigl"], help="itop methods")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98], help="global sparsities")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all available CPUs)")
    p.add_argument("--reps", type=int, default=9, help="timed updates per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates per configuration")
    p.add_argument("--drop-fraction", type=float, default=0.3,
                   help="fraction of each layer's active weights dropped and regrown per update")
    p.add_argument("--top-layers", type=int, default=5, help="slowest layers to list")
    p.add_argument("--max-other-cpu", type=float, default=0.10,
                   help="discard and repeat an update when other processes used more than this "
                        "share of the machine's CPU during it (1 disables)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="time the previous selection code ('before') against the current engine "
                        "('after') in alternating rounds and report the ratio")
    p.add_argument("--quick", action="store_true", help="3 reps, 1 warm-up: a smoke run")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.reps, args.warmup = min(args.reps, 3), min(args.warmup, 1)
    threads = set_threads(args.threads)
    info = machine_info(threads)
    print_header("itop bench_update: one topology update, ResNet-50 weights", info)
    start = time.perf_counter()
    monitor = CpuMonitor()
    torch.manual_seed(args.seed)
    model = build_model("resnet-50", in_channels=3, num_classes=1000, image_size=224)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(args.seed + 1)
    print(f"   resnet-50 (3x224x224, 1000 classes); drop fraction {args.drop_fraction}; "
          f"{args.warmup} warm-up + {args.reps} timed updates per configuration; "
          f"mode {'quick' if args.quick else 'full'}")
    results = []
    for method in args.methods:
        for sparsity in args.sparsities:
            r = run_config(model, init_state, method, sparsity, args, gen)
            results.append(r)
            print(f"\n{method} @ {sparsity:g}: {r['weights']:,} weights, {r['active']:,} active, "
                  f"{r['changed_per_update']:,} dropped + grown per update; median {r['median_ms']:.1f} ms "
                  f"(IQR {r['iqr_ms'][0]:.1f}-{r['iqr_ms'][1]:.1f}, min {r['min_ms']:.1f}, "
                  f"max {r['max_ms']:.1f}; {r['rejected_reps']} contended reps repeated) -> {r['verdict']}")
            if args.compare:
                print(f"  before (argpartition selection, torch.isin, torch.abs): median {r['before_median_ms']:.1f} ms "
                      f"(IQR {r['before_iqr_ms'][0]:.1f}-{r['before_iqr_ms'][1]:.1f}); speedup "
                      f"{r['speedup']:.2f}x (paired per round: median {r['paired_speedup_median']:.2f}x, "
                      f"IQR {r['paired_speedup_iqr'][0]:.2f}-{r['paired_speedup_iqr'][1]:.2f})")
            print(f"  phases of one profiled update (cProfile, {r['profiled_ms']:.1f} ms incl. profiler overhead):")
            print_table(["phase", "ms", "share"], [
                [k, f"{v:.1f}", f"{100 * v / max(r['profiled_ms'], 1e-9):.0f}%"]
                for k, v in r["phases_ms"].items()
            ], indent="    ")
            print("  hottest functions (own time):")
            print_table(["function", "calls", "own ms", "cum ms"], r["hottest"], indent="    ")
            if r["slowest_layers"]:
                print("  slowest layers (one timed update):")
                print_table(["layer", "numel", "active", "changed", "ms"], [
                    [x["layer"], x["numel"], x["active"], x["changed"], f"{x['ms']:.1f}"]
                    for x in r["slowest_layers"]
                ], indent="    ")
            sys.stdout.flush()

    wall = time.perf_counter() - start
    contention = monitor.fraction()
    print("\n== Summary: one topology update over ResNet-50 weights")
    print_table(
        ["method", "sparsity", "changed", "median ms", "IQR ms", "min ms", "max ms", "target", "verdict"],
        [[r["method"], f"{r['sparsity']:g}", f"{r['changed_per_update']:,}", f"{r['median_ms']:.1f}",
          f"[{r['iqr_ms'][0]:.1f}, {r['iqr_ms'][1]:.1f}]", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
          f"<= {TARGET_MS:.0f}", r["verdict"]] for r in results],
    )
    if args.compare:
        print("\n== Before (previous selection code) vs after, same run, alternating rounds")
        print_table(
            ["method", "sparsity", "before ms", "after ms", "speedup", "paired speedup [IQR]"],
            [[r["method"], f"{r['sparsity']:g}", f"{r['before_median_ms']:.1f}", f"{r['median_ms']:.1f}",
              f"{r['speedup']:.2f}x", f"{r['paired_speedup_median']:.2f}x "
              f"[{r['paired_speedup_iqr'][0]:.2f}, {r['paired_speedup_iqr'][1]:.2f}]"] for r in results],
        )
    cont = "n/a" if contention is None else f"{100 * contention:.1f}%"
    if contention is not None and contention > args.max_other_cpu:
        print(f"NOTE: other processes used {cont} of the machine during this run: absolute times are "
              "inflated; compare the before/after ratios, which saw the same load")
    print(f"\nwall time {wall:.1f} s; CPU used by other processes during the run: {cont} of the machine")
    info.update({
        "mode": "quick" if args.quick else "full",
        "compare": bool(args.compare),
        "model": "resnet-50",
        "wall_s": round(wall, 1),
        "other_cpu_fraction": None if contention is None else round(contention, 4),
        "results": results,
    })
    emit_json({"bench": "update", **info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
