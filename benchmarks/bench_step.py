"""Training-step time: dense vs itop-masked (SET, RigL), with and without a topology update.

One step is ``zero_grad -> forward -> cross-entropy -> backward -> SGD(momentum).step()``; the
masked variants add itop's post-step mask multiply (``torch._foreach_mul_``, run by the
optimizer hook) and ``sparsifier.step()``. Two phases per model:

* **no update**: sparsifiers whose update interval is never reached in the run, so every timed
  step is an ordinary masked step (the steady state between topology updates);
* **update**: sparsifiers with ``update_interval=1``, so every timed step ends with a full
  topology update (drop fraction 0.3, the start of the RigL/SET cosine schedule), timed as part
  of the step.

The no-update phase also runs a control variant, ``mul-only``: the dense model plus a bare
optimizer post-step hook doing the same ``torch._foreach_mul_`` over random 90%-sparse masks,
without itop. Its ratio is the floor any post-step masking scheme pays; the gap between it and
the itop variants is itop's own bookkeeping.

Within a phase the dense model and the masked variants are run in interleaved rounds: each
round runs every variant for a block of steps, in an order rotated from round to round, so
machine drift and contention hit all variants alike. Each variant owns its model, optimizer,
data and sparsifier; all start from the same initial weights and batches.

Reported per configuration: median step time of dense and masked over all timed steps, their
ratio (the figure the targets apply to), the interquartile range of the paired per-round ratios
(ratio of the two per-round medians) and a 95% bootstrap interval of the ratio (resampling whole
rounds, dense and masked together). The last line of output is one
line of JSON with every figure.

Usage (from the repository root)::

    python benchmarks/bench_step.py            # full run (about 5-8 minutes on 2 cores)
    python benchmarks/bench_step.py --quick    # smoke run (well under a minute)
    python benchmarks/bench_step.py --models lenet-300-100 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (  # noqa: E402
    CpuMonitor,
    bootstrap_ratio_ci,
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
from itop.models import build_model  # noqa: E402

NEVER = 10**9  # an update interval that is never reached: no topology update during the run
TOTAL_STEPS = 10**9  # training length given to the schedules (drop fraction stays ~0.3)


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked model: input shape, batch and how many rounds each phase runs."""

    name: str
    in_channels: int
    image_size: int
    batch: int
    target: float  # masked/dense target for steps without update
    rounds: int  # timed rounds, phase "no update"
    block: int  # consecutive steps per variant per round, phase "no update"
    update_rounds: int  # timed rounds, phase "update"
    update_block: int
    warmup_rounds: int = 2


CASES = {
    "lenet-300-100": ModelCase("lenet-300-100", 1, 28, 128, 1.05, rounds=80, block=10,
                               update_rounds=20, update_block=2, warmup_rounds=3),
    "lenet-5-caffe": ModelCase("lenet-5-caffe", 1, 28, 128, 1.03, rounds=40, block=3,
                               update_rounds=10, update_block=1),
    "resnet-18": ModelCase("resnet-18", 3, 32, 32, 1.03, rounds=40, block=1,
                           update_rounds=6, update_block=1),
}
NUM_CLASSES = 10
CONTROL = "mul-only"  # control variant: dense model + a bare mask-multiply hook, no sparsifier
DATA_BATCHES = 4  # distinct random batches cycled through (same for every variant)


class Variant:
    """A model + SGD optimizer (+ sparsifier) + fixed random batches, stepping on demand."""

    def __init__(self, case: ModelCase, method: str | None, sparsity: float, interval: int, seed: int) -> None:
        self.method = method
        self.sparsity = sparsity if method else 0.0
        self.label = "dense" if method is None else f"{method}@{sparsity:g}"
        torch.manual_seed(seed)
        self.model = build_model(
            case.name, in_channels=case.in_channels, num_classes=NUM_CLASSES, image_size=case.image_size
        )
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.sparsifier = None
        if method == CONTROL:
            self._add_mask_multiply_hook(sparsity, seed)
        elif method is not None:
            self.sparsifier = itop.build(
                method, self.model, self.optimizer, sparsity=sparsity, update_interval=interval,
                total_steps=TOTAL_STEPS, seed=seed,
            )
        gen = torch.Generator().manual_seed(seed + 1)
        shape = (case.batch, case.in_channels, case.image_size, case.image_size)
        self.batches = [
            (torch.randn(shape, generator=gen), torch.randint(0, NUM_CLASSES, (case.batch,), generator=gen))
            for _ in range(DATA_BATCHES)
        ]
        self._i = 0
        self.rounds: list[list[float]] = []  # timed step seconds, one list per round
        self.update_seconds: list[float] = []  # the engine's own timing of each update

    def _add_mask_multiply_hook(self, sparsity: float, seed: int) -> None:
        """Control: the same post-step ``_foreach_mul_`` over Linear/Conv weights, no itop."""
        gen = torch.Generator().manual_seed(seed + 2)
        params = [m.weight for m in self.model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        masks = [(torch.rand(p.shape, generator=gen) >= sparsity).to(p.dtype) for p in params]

        @torch.no_grad()
        def hook(optimizer, args, kwargs) -> None:
            torch._foreach_mul_(params, masks)

        hook(None, (), {})
        self.optimizer.register_step_post_hook(hook)

    def step(self) -> dict[str, Any] | None:
        x, y = self.batches[self._i % DATA_BATCHES]
        self._i += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        if self.sparsifier is not None:
            return self.sparsifier.step()
        return None

    def all_steps(self) -> list[float]:
        return [t for r in self.rounds for t in r]

    def round_values(self) -> list[float]:
        return [sorted(r)[len(r) // 2] for r in self.rounds]


def run_rounds(variants: list[Variant], rounds: int, block: int, warmup_rounds: int,
               max_other_cpu: float) -> dict[str, Any]:
    """Interleaved measurement: each round steps every variant ``block`` times, rotated order.

    A round during which other processes used more than ``max_other_cpu`` of the machine is
    discarded as a whole (all variants together, so the pairing is kept) and run again; at most
    ``max(3, rounds // 4)`` rounds are discarded (bounding the run time on a busy machine), after
    which contended rounds are kept; the count and the contention are reported.
    """
    n = len(variants)
    max_rejected = max(3, rounds // 4)
    kept = rejected = r = 0
    other: list[float] = []
    with no_gc():
        while kept < rounds:
            shift = r % n
            monitor = CpuMonitor()
            pending = []
            for v in variants[shift:] + variants[:shift]:
                times, updates = [], []
                for _ in range(block):
                    t0 = time.perf_counter()
                    record = v.step()
                    times.append(time.perf_counter() - t0)
                    if record is not None:
                        updates.append(float(record["seconds"]))
                pending.append((v, times, updates))
            r += 1
            if r <= warmup_rounds:
                continue
            frac = monitor.fraction()
            if frac is not None and frac > max_other_cpu and rejected < max_rejected:
                rejected += 1
                continue
            for v, times, updates in pending:
                v.rounds.append(times)
                v.update_seconds += updates
            if frac is not None:
                other.append(frac)
            kept += 1
    return {
        "rejected_rounds": rejected,
        "other_cpu_median": round(quantiles(other)[1], 4) if other else None,
    }


def summarize(case: ModelCase, dense: Variant, v: Variant, update: bool,
              quality: dict[str, Any]) -> dict[str, Any]:
    d_all, m_all = dense.all_steps(), v.all_steps()
    d_q, m_q = quantiles(d_all), quantiles(m_all)
    d_r, m_r = dense.round_values(), v.round_values()
    paired = [m / d for m, d in zip(m_r, d_r, strict=True)]
    p_q = quantiles(paired)
    lo, hi = bootstrap_ratio_ci(v.rounds, dense.rounds)
    ratio = m_q[1] / d_q[1]
    out: dict[str, Any] = {
        "model": case.name,
        "batch": case.batch,
        "method": v.method,
        "sparsity": v.sparsity,
        "update": update,
        "dense_ms": round(d_q[1] * 1e3, 4),
        "masked_ms": round(m_q[1] * 1e3, 4),
        "ratio": round(ratio, 4),
        "dense_iqr_ms": [round(d_q[0] * 1e3, 4), round(d_q[2] * 1e3, 4)],
        "masked_iqr_ms": [round(m_q[0] * 1e3, 4), round(m_q[2] * 1e3, 4)],
        "paired_ratio_median": round(p_q[1], 4),
        "paired_ratio_iqr": [round(p_q[0], 4), round(p_q[2], 4)],
        "ratio_ci95": [round(lo, 4), round(hi, 4)],
        "steps": len(m_all),
        "rounds": len(m_r),
        **quality,
    }
    if update:
        u = quantiles(v.update_seconds) if v.update_seconds else [float("nan")] * 3
        out["update_ms"] = round(u[1] * 1e3, 3)
        out["updates"] = len(v.update_seconds)
    elif v.method != CONTROL:
        out["target"] = case.target
        out["verdict"] = verdict(ratio, case.target)
    return out


def component_overheads(case: ModelCase, v: Variant, dense_ms: float, reps: int) -> dict[str, Any]:
    """Isolated cost of the two masked-step additions, timed outside the training step."""
    sp = v.sparsifier
    assert sp is not None
    with no_gc():
        for _ in range(5):
            sp.apply_masks()
        mul = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sp.apply_masks()
            mul.append(time.perf_counter() - t0)
        stp = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sp.step()  # no update: the interval is never reached
            stp.append(time.perf_counter() - t0)
    masked_weights = sum(int(m.numel()) for m in sp.masks().values())
    mul_ms = quantiles(mul)[1] * 1e3
    stp_ms = quantiles(stp)[1] * 1e3
    return {
        "model": case.name,
        "masked_weights": masked_weights,
        "apply_masks_ms": round(mul_ms, 4),
        "sparsifier_step_ms": round(stp_ms, 5),
        "dense_step_ms": round(dense_ms, 4),
        "expected_ratio": round(1.0 + (mul_ms + stp_ms) / dense_ms, 4),
    }


def run_case(case: ModelCase, methods: list[str], sparsities: list[float], with_update: bool,
             seed: int, max_other_cpu: float, control: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    results: list[dict[str, Any]] = []
    overhead = None
    phases = [False, True] if with_update else [False]
    for update in phases:
        t0 = time.perf_counter()
        interval = 1 if update else NEVER
        dense = Variant(case, None, 0.0, interval, seed)
        masked = [Variant(case, m, s, interval, seed) for m in methods for s in sparsities]
        if not update and control:
            masked.append(Variant(case, CONTROL, sparsities[0], interval, seed))
        rounds = case.update_rounds if update else case.rounds
        block = case.update_block if update else case.block
        quality = run_rounds([dense, *masked], rounds, block, case.warmup_rounds, max_other_cpu)
        rows = [summarize(case, dense, v, update, quality) for v in masked]
        results += rows
        phase = "steps WITH a topology update every step" if update else "steps without topology update"
        print(f"\n{case.name} (batch {case.batch}), {phase}: {rounds} rounds x {block} steps "
              f"per variant, {time.perf_counter() - t0:.1f} s; {quality['rejected_rounds']} contended "
              f"rounds discarded; other processes' CPU share in kept rounds (median): "
              f"{_pct(quality['other_cpu_median'])}")
        _print_rows(rows, update)
        if not update and masked:
            reps = 200 if rows[0]["dense_ms"] < 20 else 30
            overhead = component_overheads(case, masked[0], rows[0]["dense_ms"], reps)
        del dense, masked
    return results, overhead


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _print_rows(rows: list[dict[str, Any]], update: bool) -> None:
    headers = ["method", "sparsity", "dense ms", "masked ms", "ratio", "95% CI", "paired IQR",
               "dense IQR ms", "masked IQR ms"]
    headers += ["update ms"] if update else ["target", "verdict"]
    table = []
    for r in rows:
        row = [
            r["method"], f"{r['sparsity']:g}", f"{r['dense_ms']:.3f}", f"{r['masked_ms']:.3f}",
            f"{r['ratio']:.3f}", f"[{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]",
            f"[{r['paired_ratio_iqr'][0]:.3f}, {r['paired_ratio_iqr'][1]:.3f}]",
            f"[{r['dense_iqr_ms'][0]:.2f}, {r['dense_iqr_ms'][1]:.2f}]",
            f"[{r['masked_iqr_ms'][0]:.2f}, {r['masked_iqr_ms'][1]:.2f}]",
        ]
        row += [f"{r['update_ms']:.2f}"] if update else [
            f"<= {r['target']:.2f}" if "target" in r else "(control)", r.get("verdict", "-")]
        table.append(row)
    print_table(headers, table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Median training-step time, dense vs itop-masked (SET/RigL), interleaved rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES), metavar="MODEL",
                   help=f"models to benchmark (choices: {', '.join(CASES)})")
    p.add_argument("--methods", nargs="+", default=["set", "rigl"], help="itop methods")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98], help="global sparsities")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all available CPUs)")
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke run, not a measurement")
    p.add_argument("--rounds-scale", type=float, default=1.0,
                   help="multiply every phase's number of timed rounds (more = more stable ratios)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="override every model's batch (defaults: LeNets 128, ResNet-18 32)")
    p.add_argument("--no-update-steps", action="store_true", help="skip the phase with topology updates")
    p.add_argument("--no-control", action="store_true",
                   help=f"skip the '{CONTROL}' control variant (dense + bare _foreach_mul_ hook, no itop)")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not enable torch.set_flush_denormal (default: flush, for stable timings)")
    p.add_argument("--max-other-cpu", type=float, default=0.10,
                   help="discard and re-run a round when other processes used more than this share "
                        "of the machine's CPU during it (1 disables; at most a quarter of the rounds)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    info = machine_info(threads)
    print_header("itop bench_step: training-step time, dense vs masked", info)
    print(f"   models {args.models}; methods {args.methods}; sparsities {args.sparsities}; "
          f"SGD(lr 0.01, momentum 0.9, wd 5e-4); mode {'quick' if args.quick else 'full'}")
    monitor = CpuMonitor()
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    overheads: list[dict[str, Any]] = []
    for name in args.models:
        case = CASES[name]
        scale = args.rounds_scale * (0.1 if args.quick else 1.0)
        case = replace(
            case,
            rounds=max(3, round(case.rounds * scale)),
            update_rounds=max(2, round(case.update_rounds * scale)),
            warmup_rounds=1 if args.quick else case.warmup_rounds,
            batch=args.batch_size or case.batch,
        )
        rows, overhead = run_case(case, args.methods, args.sparsities, not args.no_update_steps,
                                  args.seed, args.max_other_cpu, not args.no_control)
        results += rows
        if overhead is not None:
            overheads.append(overhead)

    wall = time.perf_counter() - start
    contention = monitor.fraction()
    print("\n== Summary: masked/dense step time (median over all timed steps)")
    table = []
    for r in results:
        table.append([
            r["model"], r["method"], f"{r['sparsity']:g}", "yes" if r["update"] else "no",
            f"{r['dense_ms']:.3f}", f"{r['masked_ms']:.3f}", f"{r['ratio']:.3f}",
            f"[{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]",
            f"{r['update_ms']:.2f}" if r["update"] else "-",
            f"<= {r['target']:.2f}" if "target" in r else ("(control)" if r["method"] == CONTROL else "-"),
            r.get("verdict", "-"),
        ])
    print_table(["model", "method", "sparsity", "update", "dense ms", "masked ms", "ratio", "95% CI",
                 "update ms", "target", "verdict"], table)
    print("\n== Isolated cost of the masked-step additions (median of repeated calls)")
    print_table(
        ["model", "masked weights", "apply_masks ms", "sparsifier.step ms", "dense step ms", "1 + sum/dense"],
        [[o["model"], o["masked_weights"], f"{o['apply_masks_ms']:.4f}", f"{o['sparsifier_step_ms']:.5f}",
          f"{o['dense_step_ms']:.3f}", f"{o['expected_ratio']:.4f}"] for o in overheads],
    )
    misses = [r for r in results if r.get("verdict") == "MISS"]
    cont = "n/a" if contention is None else f"{100 * contention:.1f}%"
    print(f"\nwall time {wall:.1f} s; CPU used by other processes during the run: {cont} of the machine")
    passes = [r for r in results if r.get("verdict") == "PASS"]
    print(f"targets (steps without update): {len(passes)} PASS, {len(misses)} MISS")
    info.update({
        "bench": "step",
        "mode": "quick" if args.quick else "full",
        "flush_denormal": not args.keep_denormals,
        "wall_s": round(wall, 1),
        "other_cpu_fraction": None if contention is None else round(contention, 4),
        "results": results,
        "overheads": overheads,
    })
    emit_json({"bench": info.pop("bench"), **info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
