"""Evaluation: a model on a loader, and a saved checkpoint on its dataset's test split."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..errors import CheckpointError
from ..flops import profile_model, summarize
from .checkpoint import load_checkpoint
from .config import RunConfig
from .factories import input_shape, make_data, make_model, make_sparsifier, resolve_device

__all__ = ["evaluate", "evaluate_checkpoint"]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast=None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``.

    Under a process group each rank evaluates its shard and the sums are all-reduced, so every
    rank returns the metrics of the whole set.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(x)
        sums[0] += nn.functional.cross_entropy(out.float(), y, reduction="sum").double()
        sums[1] += (out.argmax(1) == y).sum()
        sums[2] += y.numel()
    model.train(was_training)
    distributed.all_reduce_sum_(sums)
    loss, correct, count = sums.tolist()
    if count == 0:
        return float("nan"), float("nan")
    return loss / count, correct / count


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy, sparsity, R_s and FLOPs of a saved model (``best.pt`` or a checkpoint)."""
    state = load_checkpoint(path, fix="evaluate another checkpoint of the run (best.pt or a file in checkpoints/)")
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an itop checkpoint (no config/model); pass best.pt or a ckpt-*.pt")
    cfg = RunConfig.from_flat(state["config"])
    if data_dir is not None:
        cfg = cfg.replace(data_dir=data_dir)
    dev = resolve_device(device)
    data = make_data(cfg)
    model = make_model(cfg, data).to(dev)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit model {cfg.model}: {str(e).splitlines()[0]}") from None
    shape = input_shape(data)
    # The masks come from the saved sparsifier state: build a static holder for them (no
    # topology updates, no pruning at init, no gradual schedule, one IMP round).
    config = dataclasses.replace(cfg.sparse_config(), update_interval=None, init_pruning=None,
                                 initial_sparsity=None, rounds=1)
    sp = make_sparsifier(cfg, model, None, 1, shape, config=config)
    sp.load_state_dict(state["sparsifier"])
    loader = data.loader("test", batch_size=256, shuffle=False)
    test_loss, test_acc = evaluate(model, loader, dev)
    weights = dict(model.named_parameters())
    zeros = sum(int((weights[n] == 0).sum()) for n in sp.layer_names())
    profile = profile_model(model, shape)
    densities = {s.name: s.density for s in sp.layer_stats()}
    flops = summarize(profile, densities, None)
    return {
        "checkpoint": str(path), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
        "test_loss": test_loss, "test_acc": test_acc,
        "sparsity": sp.actual_sparsity(), "zero_weights_fraction": zeros / sp.num_weights(),
        "itop_rate": sp.itop_rate(), "reliable_itop_rate": sp.reliable_itop_rate(), **flops,
    }
