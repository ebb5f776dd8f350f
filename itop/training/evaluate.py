"""Evaluation: a model on a loader, and a saved checkpoint on its dataset's test split.

Both score through the dataset's task (:mod:`~itop.training.tasks`): accuracy over samples for
classification, next-token accuracy over tokens (and perplexity, bits per token) for a
language model.
"""

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
from .factories import (
    float_dtype,
    input_spec,
    make_data,
    make_model,
    make_sparsifier,
    make_task_for,
    resolve_device,
)
from .tasks import Task

__all__ = ["evaluate", "evaluate_checkpoint"]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast=None,
             task: Task | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``, per prediction of
    ``task`` (default classification: per sample; a language model: per token).

    Under a process group each rank evaluates its shard and the sums are all-reduced, so every
    rank returns the metrics of the whole set.
    """
    task = task or Task()
    was_training = model.training
    model.eval()
    dtype = float_dtype(model)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    for x, y in loader:
        x = x.to(device, dtype=dtype if x.is_floating_point() else None, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(x)
        sums += task.sums(out, y)
    model.train(was_training)
    distributed.all_reduce_sum_(sums)
    loss, correct, count = sums.tolist()
    if count == 0:
        return float("nan"), float("nan")
    return loss / count, correct / count


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None, device: str = "auto",
                        data_file: str | None = None) -> dict[str, Any]:
    """Loss, accuracy (a language model: next-token accuracy, perplexity, bits per token),
    sparsity, R_s and FLOPs of a saved model (``best.pt`` or a checkpoint).

    ``data_dir`` and ``data_file`` replace the run's (data moved since it trained)."""
    state = load_checkpoint(path, fix="evaluate another checkpoint of the run (best.pt or a file in checkpoints/)")
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an itop checkpoint (no config/model); pass best.pt or a ckpt-*.pt")
    cfg = RunConfig.from_flat(state["config"])
    if data_dir is not None:
        cfg = cfg.replace(data_dir=data_dir)
    if data_file is not None:
        args = {k: v for k, v in cfg.data_args.items() if k != "data_file"}
        cfg = cfg.replace(data_args=args, data_file=data_file)
    dev = resolve_device(device)
    data = make_data(cfg)
    model = make_model(cfg, data).to(dev)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit model {cfg.model}: {str(e).splitlines()[0]}") from None
    inputs = input_spec(data)
    task = make_task_for(cfg, data)
    # The masks come from the saved sparsifier state: build a static holder for them (no
    # topology updates or update window, no pruning at init, no gradual schedule, one IMP round).
    config = dataclasses.replace(cfg.sparse_config(), update_interval=None, update_end=1.0, init_pruning=None,
                                 initial_sparsity=None, rounds=1)
    sp = make_sparsifier(cfg, model, None, 1, inputs, config=config)
    sp.load_state_dict(state["sparsifier"])
    # Building the holder applied its own initial mask, which zeroed the weights grown since;
    # the saved weights (zero wherever the saved mask is) are the model.
    model.load_state_dict(state["model"])
    loader = data.loader("test", batch_size=256, shuffle=False)
    test = task.metrics("test", *evaluate(model, loader, dev, task=task))
    weights = dict(model.named_parameters())
    zeros = sum(int((weights[n] == 0).sum()) for n in sp.layer_names())
    profile = profile_model(model, inputs.shape, dtype=inputs.dtype)
    densities = {s.name: s.density for s in sp.layer_stats()}
    flops = summarize(profile, densities, None)
    return {
        "checkpoint": str(path), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
        "task": task.name, **test,
        "sparsity": sp.actual_sparsity(), "zero_weights_fraction": zeros / sp.num_weights(),
        "itop_rate": sp.itop_rate(), "reliable_itop_rate": sp.reliable_itop_rate(), **flops,
    }
