"""Sparse execution against dense execution: training step, inference, topology update, memory.

Two parts (``--part``):

* ``kernels``: the candidate kernels for each of the three products a sparse linear layer
  needs (forward ``W xᵀ``, input gradient ``Wᵀ gᵀ``, weight gradient at the active positions),
  timed side by side on the wide MLP's layer shapes, next to the dense product. This is the
  measurement :mod:`itop.sparse.kernels` chose its kernels by.
* ``model`` (default): the configurable wide MLP (``mlp``, 784-W-W-10, batch 128) trained
  through ``itop.build(..., execution="sparse")`` against the same model and method with
  ``execution="dense"``.

Rounds are interleaved (every variant runs a block of steps per round, in an order rotated from
round to round), a round during which other processes used more than ``--max-other-cpu`` of the
machine is discarded and re-run (at most a quarter of the rounds), and medians and ratios are
reported. The last line of output is one line of JSON.

Usage (from the repository root)::

    python benchmarks/bench_sparse.py                 # the model part
    python benchmarks/bench_sparse.py --part kernels  # the kernel comparison
    python benchmarks/bench_sparse.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (  # noqa: E402
    CpuMonitor,
    emit_json,
    machine_info,
    no_gc,
    print_header,
    print_table,
    quantiles,
    set_threads,
)

from itop.sparse.kernels import CsrLayout  # noqa: E402

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")


# ----------------------------------------------------------------------------------------------
# Interleaved timing of named closures


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, block: int, warmup: int,
               max_other_cpu: float) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time every closure ``block`` times per round, rotating the order; returns the kept
    seconds per closure and the contention record."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    max_rejected = max(3, rounds // 4)
    kept = rejected = r = 0
    other: list[float] = []
    with no_gc():
        while kept < rounds:
            shift = r % len(names)
            monitor = CpuMonitor()
            pending: dict[str, list[float]] = {}
            for n in names[shift:] + names[:shift]:
                fn = fns[n]
                ts = []
                for _ in range(block):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                pending[n] = ts
            r += 1
            if r <= warmup:
                continue
            frac = monitor.fraction()
            if frac is not None and frac > max_other_cpu and rejected < max_rejected:
                rejected += 1
                continue
            for n, ts in pending.items():
                times[n] += ts
            if frac is not None:
                other.append(frac)
            kept += 1
    return times, {"rejected_rounds": rejected,
                   "other_cpu_median": round(quantiles(other)[1], 4) if other else None}


def median_ms(ts: list[float]) -> float:
    return quantiles(ts)[1] * 1e3


# ----------------------------------------------------------------------------------------------
# Part "kernels"


def _random_layout(shape: tuple[int, int], density: float, gen: torch.Generator) -> CsrLayout:
    numel = shape[0] * shape[1]
    nnz = max(1, round(density * numel))
    idx = torch.randperm(numel, generator=gen)[:nnz].sort().values
    return CsrLayout(idx, shape)


def kernel_candidates(shape: tuple[int, int], density: float, batch: int,
                      seed: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """Closures per product: ``{"forward": {...}, "grad_input": {...}, "grad_weight": {...}}``."""
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    lay = _random_layout(shape, density, gen)
    values = torch.randn(lay.nnz, generator=gen)
    x = torch.randn(batch, in_f, generator=gen)
    g = torch.randn(batch, out_f, generator=gen)
    xt, gt = x.t().contiguous(), g.t().contiguous()
    w_dense = torch.randn(out_f, in_f, generator=gen)
    csr = lay.matrix(values)
    csr32 = torch.sparse_csr_tensor(lay.crow.int(), lay.col.int(), values, shape)
    coo = csr.to_sparse_coo().coalesce()
    t_csr = lay.transposed(values)
    pattern = lay.pattern(values.dtype)
    rows = torch.repeat_interleave(torch.arange(out_f), lay.crow.diff())
    cols = lay.col

    def gather_forward(chunk: int = 1 << 15) -> torch.Tensor:
        yt = torch.zeros(out_f, batch)
        for s in range(0, lay.nnz, chunk):
            sl = slice(s, s + chunk)
            yt.index_add_(0, rows[sl], xt.index_select(0, cols[sl]) * values[sl, None])
        return yt

    def gather_dot(chunk: int = 1 << 15) -> torch.Tensor:
        o = torch.empty(lay.nnz)
        for s in range(0, lay.nnz, chunk):
            sl = slice(s, s + chunk)
            torch.sum(gt.index_select(0, rows[sl]) * xt.index_select(0, cols[sl]), 1, out=o[sl])
        return o

    return {
        "forward": {
            "dense x@W.T": lambda: x @ w_dense.t(),
            "csr reduce (ATen)": lambda: torch.sparse.mm(csr, xt, "sum"),
            "csr mkl int64": lambda: torch.sparse.mm(csr, xt),
            "csr mkl int32": lambda: torch.sparse.mm(csr32, xt),
            "coo": lambda: torch.sparse.mm(coo, xt),
            "dense@csr.t()": lambda: x @ csr.t(),
            "gather+index_add": gather_forward,
        },
        "grad_input": {
            "dense g@W": lambda: g @ w_dense,
            "csr(W.T) reduce + gather": lambda: torch.sparse.mm(lay.transposed(values), gt, "sum"),
            "csr(W.T) mkl + gather": lambda: torch.sparse.mm(lay.transposed(values), gt),
            "csr(W.T) reduce, no gather": lambda: torch.sparse.mm(t_csr, gt, "sum"),
            "csc view W.t()@g.T": lambda: csr.t() @ gt,
            "dense g@csr": lambda: g @ csr,
        },
        "grad_weight": {
            "dense g.T@x": lambda: gt @ x,
            "sddmm (x.T view)": lambda: torch.sparse.sampled_addmm(pattern, gt, xt.t(), beta=0.0),
            "sddmm (x row-major)": lambda: torch.sparse.sampled_addmm(pattern, gt, x, beta=0.0),
            "gather+dot": gather_dot,
        },
    }, lay.nnz


def run_kernels(args: argparse.Namespace) -> dict[str, Any]:
    shapes = [(w, w) for w in args.widths] + [(args.widths[-1], 784)]
    records = []
    for shape in shapes:
        for density in args.densities:
            cands, nnz = kernel_candidates(shape, density, args.batch, args.seed)
            for product, fns in cands.items():
                rounds = 3 if args.quick else args.kernel_rounds
                times, quality = interleave(fns, rounds, 1, 1, args.max_other_cpu)
                dense_name = next(iter(fns))
                dense_ms = median_ms(times[dense_name])
                table = []
                for name, ts in times.items():
                    ms = median_ms(ts)
                    records.append({"shape": list(shape), "density": density, "nnz": nnz,
                                    "product": product, "kernel": name, "ms": round(ms, 4),
                                    "speedup_vs_dense": round(dense_ms / ms, 3)})
                    table.append([name, f"{ms:.3f}", f"{dense_ms / ms:.2f}x"])
                print(f"\n{shape[0]}x{shape[1]} density {density:g} ({nnz} nnz), {product}: "
                      f"{rounds} rounds, {quality['rejected_rounds']} contended rounds discarded")
                print_table(["kernel", "median ms", "vs dense"], table)
                sys.stdout.flush()
    return {"kernels": records}


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Sparse vs dense execution of the wide MLP (training step, inference, update, memory).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--part", choices=["model", "kernels"], default="model")
    p.add_argument("--widths", nargs="+", type=int, default=[1024, 2048, 4096])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.98, 0.99])
    p.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.05, 0.02, 0.01],
                   help="kernel part: layer densities")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads (0: all available CPUs)")
    p.add_argument("--kernel-rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke run, not a measurement")
    p.add_argument("--max-other-cpu", type=float, default=0.10,
                   help="discard and re-run a round when other processes used more than this share "
                        "of the machine's CPU during it (1 disables; at most a quarter of the rounds)")
    p.add_argument("--keep-denormals", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    info = machine_info(threads)
    print_header(f"itop bench_sparse ({args.part}): sparse vs dense execution", info)
    monitor = CpuMonitor()
    start = time.perf_counter()
    payload = run_kernels(args)
    wall = time.perf_counter() - start
    contention = monitor.fraction()
    info.update({"bench": "sparse", "part": args.part, "mode": "quick" if args.quick else "full",
                 "wall_s": round(wall, 1),
                 "other_cpu_fraction": None if contention is None else round(contention, 4), **payload})
    emit_json({"bench": info.pop("bench"), **info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
