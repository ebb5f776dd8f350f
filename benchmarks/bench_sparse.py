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
import contextlib
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
    bootstrap_ratio_ci,
    emit_json,
    machine_info,
    no_gc,
    print_header,
    print_table,
    quantiles,
    set_threads,
)

import itop  # noqa: E402
from itop.models import build_model  # noqa: E402
from itop.sparse import SparseLinear  # noqa: E402
from itop.sparse import kernels as sparse_kernels  # noqa: E402
from itop.sparse.kernels import CsrLayout, NativeCpuKernels, TorchKernels  # noqa: E402
from itop.sparse.native import native_kernels, native_status  # noqa: E402

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")


# ----------------------------------------------------------------------------------------------
# Interleaved timing of named closures


class NormalPriorityMonitor(CpuMonitor):
    """:class:`CpuMonitor` that leaves out CPU time of niced processes (``--ignore-niced``).

    A process at nice 19 gets about 1.5% of a core next to one at nice 0 (CFS weights 15 vs
    1024), so a long niced job on a shared machine barely slows the timed threads; counting it
    as contention would discard every round.
    """

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        busy = sum(values[:8]) - idle - values[1]  # minus the "nice" column
        return busy / os.sysconf("SC_CLK_TCK")


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, block: int, warmup: int,
               max_other_cpu: float, monitor_cls: type[CpuMonitor] = CpuMonitor,
               ) -> tuple[dict[str, list[list[float]]], dict[str, Any]]:
    """Time every closure ``block`` times per round, rotating the order; returns the kept
    seconds per closure (one list per round) and the contention record."""
    names = list(fns)
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    max_rejected = max(3, rounds // 4)
    kept = rejected = r = 0
    other: list[float] = []
    with no_gc():
        while kept < rounds:
            shift = r % len(names)
            monitor = monitor_cls()
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
                times[n].append(ts)
            if frac is not None:
                other.append(frac)
            kept += 1
    return times, {"rejected_rounds": rejected,
                   "other_cpu_median": round(quantiles(other)[1], 4) if other else None}


def median_ms(rounds: list[list[float]]) -> float:
    return quantiles([t for r in rounds for t in r])[1] * 1e3


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
    csr = lay.matrix(values)  # int32 indices, as the layer uses
    csr64 = torch.sparse_csr_tensor(lay.crow.long(), lay.col.long(), values, shape)
    coo = csr.to_sparse_coo().coalesce()
    t_csr = lay.transposed(values)
    pattern = lay.pattern(values.dtype)
    rows = torch.repeat_interleave(torch.arange(out_f), lay.crow.long().diff())
    cols = lay.col.long()

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

    torch_layer, native_layer = TorchKernels(), NativeCpuKernels()
    layer: dict[str, dict[str, Callable[[], Any]]] = {"forward": {}, "grad_input": {}, "grad_weight": {}}
    # Whole layer products as the backends run them, from and to row-major (N, features)
    # tensors: the transposes each backend needs are inside the timing.
    layer["forward"]["layer: torch backend (with transposes)"] = lambda: torch_layer.forward(x, values, None, lay)
    layer["grad_input"]["layer: torch backend (with transpose)"] = lambda: torch_layer.backward(
        g, xt, values, lay, True, False)
    if native_kernels() is not None:
        nk = native_kernels()
        xt_pad, gt_pad = nk.transpose_pad(x), nk.transpose_pad(g)
        layer["forward"]["layer: native backend (with transposes)"] = lambda: native_layer.forward(
            x, values, None, lay)
        layer["grad_input"]["layer: native backend (with transpose)"] = lambda: native_layer.backward(
            g, xt_pad, values, lay, True, False)
        layer["grad_weight"]["native sddmm"] = lambda: nk.sddmm(lay.crow, lay.col, gt_pad, xt_pad)

    return {
        "forward": {
            "dense x@W.T": lambda: x @ w_dense.t(),
            **layer["forward"],
            "csr reduce (ATen) int32": lambda: torch.sparse.mm(csr, xt, "sum"),
            "csr reduce (ATen) int64": lambda: torch.sparse.mm(csr64, xt, "sum"),
            "csr mkl int32": lambda: torch.sparse.mm(csr, xt),
            "csr mkl int64": lambda: torch.sparse.mm(csr64, xt),
            "coo": lambda: torch.sparse.mm(coo, xt),
            "dense@csr.t()": lambda: x @ csr.t(),
            "gather+index_add": gather_forward,
        },
        "grad_input": {
            "dense g@W": lambda: g @ w_dense,
            **layer["grad_input"],
            "csr(W.T) reduce + gather": lambda: torch.sparse.mm(lay.transposed(values), gt, "sum"),
            "csr(W.T) mkl + gather": lambda: torch.sparse.mm(lay.transposed(values), gt),
            "csr(W.T) reduce, no gather": lambda: torch.sparse.mm(t_csr, gt, "sum"),
            "csc view W.t()@g.T": lambda: csr.t() @ gt,
            "dense g@csr": lambda: g @ csr,
        },
        "grad_weight": {
            "dense g.T@x": lambda: gt @ x,
            **layer["grad_weight"],
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
                times, quality = interleave(fns, rounds, 1, 1, args.max_other_cpu, args.monitor_cls)
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
# Part "model"

NEVER = 10**9  # an update interval never reached: the timed steps are steady-state steps
TOTAL_STEPS = 10**9
DATA_BATCHES = 4
TARGETS = {0.98: {"train": 8.0, "infer": 10.0}, 0.9: {"train": 3.0, "infer": 3.0}}
TARGET_WIDTH = 4096
# (rounds, block) of the training and inference phases by width: about the same time per width.
SCHEDULE = {1024: (20, 5, 20, 10), 2048: (14, 3, 16, 6), 4096: (10, 2, 12, 3)}


#: Kernel backends a sparse variant can run with (``--kernels``): the backend list in force.
KERNEL_CHOICES: dict[str, Callable[[], list[Any]]] = {
    "native": lambda: [NativeCpuKernels(), TorchKernels()],
    "torch": lambda: [TorchKernels()],
}


@contextlib.contextmanager
def kernel_backends(name: str | None):
    """Run sparse layers with the named backends (``None``: leave them as they are)."""
    if name is None:
        yield
        return
    saved = list(sparse_kernels.BACKENDS)
    sparse_kernels.BACKENDS[:] = KERNEL_CHOICES[name]()
    try:
        yield
    finally:
        sparse_kernels.BACKENDS[:] = saved


class Variant:
    """The wide MLP trained through ``itop.build(..., execution=...)`` on fixed random batches;
    sparse variants run with one set of kernels (``kernels``)."""

    def __init__(self, width: int, sparsity: float, execution: str, args: argparse.Namespace,
                 kernels: str | None = None) -> None:
        self.width, self.sparsity, self.execution, self.kernels = width, sparsity, execution, kernels
        self.label = f"{execution}{'-' + kernels if kernels else ''}@{sparsity:g}"
        torch.manual_seed(args.seed)
        self.model = build_model("mlp", in_channels=1, num_classes=10, image_size=28, hidden=(width, width))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.sparsifier = itop.build(args.method, self.model, self.optimizer, sparsity=sparsity,
                                     distribution=args.distribution, update_interval=NEVER,
                                     total_steps=TOTAL_STEPS, seed=args.seed, execution=execution)
        gen = torch.Generator().manual_seed(args.seed + 1)
        self.batches = [(torch.randn(args.batch, 1, 28, 28, generator=gen),
                         torch.randint(0, 10, (args.batch,), generator=gen)) for _ in range(DATA_BATCHES)]
        self._i = 0

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._i += 1
        return self.batches[self._i % DATA_BATCHES]

    def train_step(self) -> None:
        x, y = self._batch()
        with kernel_backends(self.kernels):
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.sparsifier.step()

    @torch.no_grad()
    def infer(self) -> None:
        x = self._batch()[0]
        with kernel_backends(self.kernels):
            self.model(x)

    def update(self, drop: float) -> tuple[float, float]:
        """One training step ending with a topology update: (step seconds, update seconds)."""
        with kernel_backends(self.kernels):
            return self._update(drop)

    def _update(self, drop: float) -> tuple[float, float]:
        x, y = self._batch()
        t0 = time.perf_counter()
        self.sparsifier.request_dense_gradient()  # what a scheduled RigL update step asks for
        self.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()
        record = self.sparsifier.update_topology(drop)
        return time.perf_counter() - t0, float(record["seconds"])

    def memory(self) -> dict[str, int]:
        """Bytes of parameters, optimizer state and topology structure (masks or indices)."""
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        state = sum(v.numel() * v.element_size() for st in self.optimizer.state.values()
                    for v in st.values() if isinstance(v, torch.Tensor))
        structure = sum(m.numel() * m.element_size() for m in self.sparsifier._mask_tensors)
        for m in self.model.modules():  # sparse layers: flat positions and their CSR structures
            if isinstance(m, SparseLinear):
                structure += m.indices.numel() * m.indices.element_size() + m.layout().nbytes()
        return {"params": params, "optimizer_state": state, "structure": structure,
                "total": params + state + structure}


def _speedup(dense: list[list[float]], sparse: list[list[float]]) -> tuple[float, list[float]]:
    ratio = median_ms(dense) / median_ms(sparse)
    lo, hi = bootstrap_ratio_ci(dense, sparse)
    return ratio, [round(lo, 3), round(hi, 3)]


def run_width(width: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    t_start = time.perf_counter()
    kinds = [("dense", None)] + [("sparse", k) for k in args.kernels]
    variants = {(s, e, k): Variant(width, s, e, args, k) for s in args.sparsities for e, k in kinds}
    main_kernels = args.kernels[0]
    layers = [(st.name, st.execution, round(st.density, 5))
              for st in variants[(args.sparsities[-1], "sparse", main_kernels)].sparsifier.layer_stats()]
    tr, tb, ir, ib = SCHEDULE.get(width, (10, 2, 12, 3))
    if args.quick:
        tr, tb, ir, ib = 2, 1, 2, 1
    for v in variants.values():
        v.train_step()  # optimizer state exists before the memory figures and the timing
    train, q_train = interleave({v.label: v.train_step for v in variants.values()}, tr, tb, 1,
                                args.max_other_cpu, args.monitor_cls)
    for v in variants.values():
        v.model.eval()
    infer, q_infer = interleave({v.label: v.infer for v in variants.values()}, ir, ib, 1,
                                args.max_other_cpu, args.monitor_cls)
    for v in variants.values():
        v.model.train()
    update: dict[str, list[tuple[float, float]]] = {}
    reps = 1 if args.quick else args.update_reps
    for v in variants.values():
        v.update(0.3)  # warm-up
        with no_gc():
            update[v.label] = [v.update(0.3) for _ in range(reps)]
    rows = []
    for s in args.sparsities:
        d, sp = variants[(s, "dense", None)], variants[(s, "sparse", main_kernels)]
        train_x, train_ci = _speedup(train[d.label], train[sp.label])
        infer_x, infer_ci = _speedup(infer[d.label], infer[sp.label])
        mem_d, mem_s = d.memory(), sp.memory()
        upd_d, upd_s = update[d.label], update[sp.label]
        row = {
            "width": width, "sparsity": s, "density": round(1 - s, 4), "limit": round(1 / (1 - s), 2),
            "train_speedup": round(train_x, 3), "infer_speedup": round(infer_x, 3),
            "train_speedup_ci95": train_ci, "infer_speedup_ci95": infer_ci,
            "dense_train_ms": round(median_ms(train[d.label]), 3),
            "sparse_train_ms": round(median_ms(train[sp.label]), 3),
            "dense_infer_ms": round(median_ms(infer[d.label]), 3),
            "sparse_infer_ms": round(median_ms(infer[sp.label]), 3),
            "dense_update_ms": round(quantiles([u for _, u in upd_d])[1] * 1e3, 2),
            "sparse_update_ms": round(quantiles([u for _, u in upd_s])[1] * 1e3, 2),
            "dense_update_step_ms": round(quantiles([t for t, _ in upd_d])[1] * 1e3, 2),
            "sparse_update_step_ms": round(quantiles([t for t, _ in upd_s])[1] * 1e3, 2),
            "dense_memory_bytes": mem_d, "sparse_memory_bytes": mem_s,
            "memory_ratio": round(mem_d["total"] / mem_s["total"], 2),
            "kernels": main_kernels,
            "by_kernels": {k: {
                "train_speedup": round(_speedup(train[d.label], train[variants[(s, "sparse", k)].label])[0], 3),
                "infer_speedup": round(_speedup(infer[d.label], infer[variants[(s, "sparse", k)].label])[0], 3),
                "sparse_train_ms": round(median_ms(train[variants[(s, "sparse", k)].label]), 3),
                "sparse_infer_ms": round(median_ms(infer[variants[(s, "sparse", k)].label]), 3),
            } for k in args.kernels},
            "rejected_rounds": {"train": q_train["rejected_rounds"], "infer": q_infer["rejected_rounds"]},
            "other_cpu_median": {"train": q_train["other_cpu_median"], "infer": q_infer["other_cpu_median"]},
        }
        target = TARGETS.get(s) if width == TARGET_WIDTH else None
        if target is not None:
            row["target"] = target
            row["verdict"] = "PASS" if train_x >= target["train"] and infer_x >= target["infer"] else "MISS"
        rows.append(row)
    print(f"\nwidth {width} (784-{width}-{width}-10, batch {args.batch}, {args.method}, "
          f"{args.distribution}): train {tr} rounds x {tb}, inference {ir} x {ib}, {reps} updates; "
          f"{time.perf_counter() - t_start:.0f} s; contended rounds discarded: train "
          f"{q_train['rejected_rounds']}, inference {q_infer['rejected_rounds']}")
    print(f"   sparse kernels: {', '.join(args.kernels)} (headline figures: {main_kernels})")
    print("   layers at sparsity {:g}: {}".format(args.sparsities[-1], ", ".join(
        f"{n} {e} density {d}" for n, e, d in layers)))
    print_table(
        ["sparsity", "1/density", "train dense ms", "train sparse ms", "train x", "95% CI",
         "infer dense ms", "infer sparse ms", "infer x", "update ms d/s", "update step ms d/s",
         "memory MB d/s", "verdict"],
        [[f"{r['sparsity']:g}", f"{r['limit']:.1f}", f"{r['dense_train_ms']:.2f}", f"{r['sparse_train_ms']:.2f}",
          f"{r['train_speedup']:.2f}x", f"[{r['train_speedup_ci95'][0]:.2f}, {r['train_speedup_ci95'][1]:.2f}]",
          f"{r['dense_infer_ms']:.2f}", f"{r['sparse_infer_ms']:.2f}", f"{r['infer_speedup']:.2f}x",
          f"{r['dense_update_ms']:.1f} / {r['sparse_update_ms']:.1f}",
          f"{r['dense_update_step_ms']:.1f} / {r['sparse_update_step_ms']:.1f}",
          f"{r['dense_memory_bytes']['total'] / 2**20:.1f} / {r['sparse_memory_bytes']['total'] / 2**20:.1f}",
          r.get("verdict", "-")] for r in rows])
    if len(args.kernels) > 1:
        print("   by kernels (same rounds):")
        print_table(["sparsity", *[f"{k} train ms / x" for k in args.kernels],
                     *[f"{k} infer ms / x" for k in args.kernels]],
                    [[f"{r['sparsity']:g}",
                      *[f"{r['by_kernels'][k]['sparse_train_ms']:.2f} / {r['by_kernels'][k]['train_speedup']:.2f}x"
                        for k in args.kernels],
                      *[f"{r['by_kernels'][k]['sparse_infer_ms']:.2f} / {r['by_kernels'][k]['infer_speedup']:.2f}x"
                        for k in args.kernels]] for r in rows])
    del variants
    return rows


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for width in args.widths:
        results += run_width(width, args)
    return {"method": args.method, "distribution": args.distribution, "batch": args.batch,
            "results": results}


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
    p.add_argument("--kernels", nargs="+", choices=sorted(KERNEL_CHOICES), default=None,
                   help="model part: sparse kernels to time side by side, the first gives the headline "
                        "figures (default: native torch, or torch when the native kernels are unavailable)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (0: all available CPUs)")
    p.add_argument("--kernel-rounds", type=int, default=15)
    p.add_argument("--method", default="rigl", help="itop method of both executions")
    p.add_argument("--distribution", default="erk", help="density distribution (erk: the methods' default)")
    p.add_argument("--update-reps", type=int, default=3, help="timed topology updates per variant")
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke run, not a measurement")
    p.add_argument("--max-other-cpu", type=float, default=0.10,
                   help="discard and re-run a round when other processes used more than this share "
                        "of the machine's CPU during it (1 disables; at most a quarter of the rounds)")
    p.add_argument("--ignore-niced", action="store_true",
                   help="leave CPU time of niced processes out of the contention figure")
    p.add_argument("--keep-denormals", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    available = native_kernels() is not None
    if args.kernels is None:
        args.kernels = ["native", "torch"] if available else ["torch"]
    if "native" in args.kernels and not available:
        print(f"bench_sparse: error: --kernels native: {native_status()}", file=sys.stderr)
        return 2
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    info = machine_info(threads)
    args.monitor_cls = NormalPriorityMonitor if args.ignore_niced else CpuMonitor
    print_header(f"itop bench_sparse ({args.part}): sparse vs dense execution", info)
    monitor = args.monitor_cls()
    start = time.perf_counter()
    payload = run_kernels(args) if args.part == "kernels" else run_model(args)
    wall = time.perf_counter() - start
    contention = monitor.fraction()
    info.update({"bench": "sparse", "part": args.part, "cpu_kernels": native_status(), "mode": "quick" if args.quick else "full",
                 "wall_s": round(wall, 1), "ignore_niced": args.ignore_niced,
                 "other_cpu_fraction": None if contention is None else round(contention, 4), **payload})
    emit_json({"bench": info.pop("bench"), **info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
