"""One training epoch through the runner, dense vs RigL at 98% sparsity.

Runs LeNet-5-Caffe on Fashion-MNIST (from ../shared/datasets/fashion-mnist when present,
else the normal data lookup) with exactly the loop ``itop train`` uses (:class:`itop.training.Trainer`),
alternating dense and sparse runs, and reports the training seconds of the epoch (evaluation
excluded) and their ratio. Ends with one JSON line.

    python benchmarks/bench_epoch.py [--repeats 2] [--threads 2] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from itop.training import Trainer
from itop.training.config import load_config

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets" / "fashion-mnist"


def epoch_seconds(method: str, sparsity: float, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    cfg = load_config(None, {
        "dataset": args.dataset, "data_dir": args.data_dir, "model": "lenet-5-caffe",
        "method": method, "sparsity": sparsity, "epochs": 1, "batch_size": args.batch_size,
        "lr": 0.1, "update_interval": args.update_interval, "out_dir": str(out),
        "name": f"{method}-{len(list(out.iterdir()))}", "tensorboard": False, "progress": "none",
        "download": False,
    })
    trainer = Trainer(cfg)
    trainer.fit()
    record = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return record["seconds"], record["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--update-interval", type=int, default=100)
    parser.add_argument("--data-dir", default=str(SHARED) if SHARED.is_dir() else None)
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(f"# bench_epoch: torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}")
    print(f"# {args.dataset} from {args.data_dir or 'the default lookup'}, LeNet-5-Caffe, batch {args.batch_size}")
    times: dict[str, list[float]] = {"dense": [], "rigl": []}
    accs: dict[str, list[float]] = {"dense": [], "rigl": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(args.repeats):
            for method, sparsity in (("dense", 0.0), ("rigl", 0.98)):
                s, acc = epoch_seconds(method, sparsity, args, out)
                times[method].append(s)
                accs[method].append(acc)
    dense, rigl = statistics.median(times["dense"]), statistics.median(times["rigl"])
    print(f"{'run':<14}{'s/epoch (median)':>18}{'runs':>28}{'test acc':>10}")
    print(f"{'dense':<14}{dense:>18.2f}{str([round(t, 2) for t in times['dense']]):>28}{accs['dense'][-1]:>10.4f}")
    print(f"{'rigl 98%':<14}{rigl:>18.2f}{str([round(t, 2) for t in times['rigl']]):>28}{accs['rigl'][-1]:>10.4f}")
    print(f"ratio rigl/dense: {rigl / dense:.3f}")
    print(json.dumps({"bench": "epoch", "torch": torch.__version__, "threads": args.threads,
                      "dataset": args.dataset, "model": "lenet-5-caffe", "batch_size": args.batch_size,
                      "dense_s": dense, "rigl98_s": rigl, "ratio": rigl / dense,
                      "dense_runs": times["dense"], "rigl_runs": times["rigl"]}))


if __name__ == "__main__":
    main()
