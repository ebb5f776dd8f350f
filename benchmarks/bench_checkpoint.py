"""What checksums cost: writing and reading a ResNet-50 training checkpoint with and without them.

The state is what ``itop train`` writes for ResNet-50 on ImageNet: the model (25.6 M
parameters), SGD's momentum buffers after one real step, a RigL sparsifier at 90% sparsity
(active indices and the ITOP tracker's maps), the LR scheduler, the FLOP counters' shape and every
RNG state: about 380 MB of tensors. Variants, measured side by side in interleaved rounds (the
order rotated from round to round, so drift and contention hit all alike):

* **digest**: ``state_digests`` alone (SHA-256 of every entry: the extra pass over the bytes,
  big tensors hashed on up to 8 threads), and **digest, 1 thread** for comparison;
* **save (before)**: what ``save_checkpoint`` did before checksums: temporary file,
  ``torch.save``, fsync, rename;
* **save**: ``save_checkpoint`` (the same plus the digest);
* **load (before)**: ``torch.load(weights_only=True)``;
* **load**: ``load_checkpoint`` (the same plus verification).

A round during which other processes used more than ``--max-other-cpu`` of the machine (read
from ``/proc/stat``) is discarded and run again, all variants together, at most ``rounds`` times
(so a busy machine cannot keep it going forever); the number discarded and the foreign share of
the kept rounds are reported. Reported: the median seconds of each, the ratios
save/save-before and load/load-before, and the digest's throughput. File
writes go to ``--dir`` (default: a temporary folder on the same disk as ``/tmp``); the page cache
makes reads after the first round memory-speed, which is the worst case for the ratio. The last
line is one line of JSON with every figure.

Usage (from the repository root)::

    python benchmarks/bench_checkpoint.py            # 5 rounds (about 1-2 minutes on 2 cores)
    python benchmarks/bench_checkpoint.py --quick    # 2 rounds of a ResNet-18 state
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

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
    timed,
)

import itop  # noqa: E402
from itop.models import build_model  # noqa: E402
from itop.training import checkpoint  # noqa: E402
from itop.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, state_digests  # noqa: E402


def training_state(model_name: str, image_size: int, num_classes: int) -> dict[str, Any]:
    """A checkpoint as the trainer writes it, for one model (after one real training step)."""
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=3, num_classes=num_classes, image_size=image_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    sp = itop.build("rigl", model, opt, sparsity=0.9, update_interval=100, total_steps=1000, seed=0)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, num_classes, (2,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sched.step()
    sp.step()
    return {
        "format": "itop-run-checkpoint", "version": 3,
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "sparsifier": sp.state_dict(), "rng": rng_state(),
        "progress": {"epoch": 0, "batch": 1, "step": 1, "elapsed": 1.0, "best": {}, "last_eval": {}},
    }


def tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def digest_one_thread(state: dict[str, Any]) -> dict[str, str]:
    workers, checkpoint._MAX_WORKERS = checkpoint._MAX_WORKERS, 1
    try:
        return state_digests(state)
    finally:
        checkpoint._MAX_WORKERS = workers


def save_before(state: dict[str, Any], path: Path) -> None:
    """``save_checkpoint`` as it was before checksums (temporary file, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of a ResNet-18 (CIFAR) state")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    parser.add_argument("--dir", default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--max-other-cpu", type=float, default=0.10,
                        help="discard a round in which other processes used more of the CPU (default 0.10)")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    info = machine_info(threads)
    print_header("bench_checkpoint: the cost of checkpoint checksums", info)

    model_name, image_size, classes = ("resnet-18", 32, 10) if args.quick else ("resnet-50", 224, 1000)
    rounds = args.rounds or (2 if args.quick else 5)
    state = training_state(model_name, image_size, classes)
    size = tensor_bytes(state)
    print(f"   state: {model_name}, {size / 2**20:.0f} MiB of tensors; {rounds} rounds")

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="itop-bench-ckpt-"))
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / "before.pt", folder / "with-checksum.pt"
    save_before(state, a)  # warm-up: files exist, the page cache holds them
    save_checkpoint(state, b)
    variants = {
        "digest": lambda: state_digests(state),
        "digest, 1 thread": lambda: digest_one_thread(state),
        "save (before)": lambda: save_before(state, a),
        "save": lambda: save_checkpoint(state, b),
        "load (before)": lambda: torch.load(a, weights_only=True),
        "load": lambda: load_checkpoint(b),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    kept_other: list[float] = []
    rejected = r = 0
    while len(times["digest"]) < rounds:
        order = names[r % len(names):] + names[: r % len(names)]
        r += 1
        monitor = CpuMonitor()
        got = {}
        for name in order:
            with no_gc():
                got[name], _ = timed(variants[name])
        frac = monitor.fraction()
        if frac is not None and frac > args.max_other_cpu and rejected < rounds:
            rejected += 1
            continue
        for name, seconds in got.items():
            times[name].append(seconds)
        if frac is not None:
            kept_other.append(frac)
    contention = quantiles(kept_other)[1] if kept_other else None
    file_mib = b.stat().st_size / 2**20
    for p in (a, b):
        p.unlink(missing_ok=True)
    if not args.dir:
        folder.rmdir()

    med = {k: quantiles(v)[1] for k, v in times.items()}
    rows = [(k, f"{med[k]:.3f}", f"{quantiles(times[k])[0]:.3f}-{quantiles(times[k])[2]:.3f}") for k in names]
    print_table(["variant", "median s", "IQR s"], rows)
    save_ratio = med["save"] / med["save (before)"]
    load_ratio = med["load"] / med["load (before)"]
    throughput = size / 2**20 / med["digest"]
    print(f"\n   digest: {throughput:.0f} MiB/s; save x{save_ratio:.2f} (+{med['save'] - med['save (before)']:.2f} s), "
          f"load x{load_ratio:.2f} (+{med['load'] - med['load (before)']:.2f} s); file {file_mib:.0f} MiB")
    print(f"   {rejected} contended round(s) discarded and repeated")
    if contention is not None:
        print(f"   other processes used {100 * contention:.0f}% of the machine's CPU time in the kept rounds "
              "(median)" + ("  (WARNING: contended; timings are slower and noisier)"
                            if contention > args.max_other_cpu else ""))
    emit_json({
        "benchmark": "bench_checkpoint", **info, "model": model_name, "rounds": rounds,
        "state_mib": round(size / 2**20, 1), "file_mib": round(file_mib, 1),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "digest_mib_per_s": round(throughput, 1), "save_ratio": round(save_ratio, 3),
        "load_ratio": round(load_ratio, 3), "rejected_rounds": rejected,
        "other_cpu_fraction": None if contention is None else round(contention, 3),
    })


if __name__ == "__main__":
    main()
