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
from ..sparse import EXPORT_FORMAT, load_export, read_export
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

__all__ = ["evaluate", "evaluate_checkpoint", "evaluate_export", "restore_model"]


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


def restore_model(state: dict[str, Any], path: str | Path, cfg: RunConfig, data, dev: torch.device):
    """The model, a static sparsifier and the dense FLOP profile of a saved run, in the run's
    execution mode.

    The model is profiled (dense FLOPs per layer), then the sparsifier is built (with
    ``execution: sparse`` it replaces the model's linear layers by sparse ones), then the
    model's and the sparsifier's state are loaded, as a resume does: the holder's own initial
    mask only touches the fresh weights, which the saved ones (zero wherever the saved mask is)
    then replace.
    """
    model = make_model(cfg, data).to(dev)
    inputs = input_spec(data)
    profile = profile_model(model, inputs.shape, dtype=inputs.dtype)
    # The masks come from the saved sparsifier state: build a static holder for them (no
    # topology updates or update window, no pruning at init, no gradual schedule, one IMP round).
    config = dataclasses.replace(cfg.sparse_config(), update_interval=None, update_end=1.0, init_pruning=None,
                                 initial_sparsity=None, rounds=1)
    sp = make_sparsifier(cfg, model, None, 1, inputs, config=config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit model {cfg.model}: {str(e).splitlines()[0]}") from None
    sp.load_state_dict(state["sparsifier"])
    return model, sp, profile


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None, device: str = "auto",
                        data_file: str | None = None) -> dict[str, Any]:
    """Loss, accuracy (a language model: next-token accuracy, perplexity, bits per token),
    sparsity, R_s and FLOPs of a saved model (``best.pt``, a checkpoint, or an ``itop export``
    file: :func:`evaluate_export`).

    ``data_dir`` and ``data_file`` replace the run's (data moved since it trained)."""
    state = load_checkpoint(path, fix="evaluate another checkpoint of the run (best.pt or a file in checkpoints/)")
    if state.get("format") == EXPORT_FORMAT:
        return evaluate_export(path, data_dir, device)
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
    model, sp, profile = restore_model(state, path, cfg, data, dev)
    task = make_task_for(cfg, data)
    loader = data.loader("test", batch_size=256, shuffle=False)
    test = task.metrics("test", *evaluate(model, loader, dev, task=task))
    zeros = sum(int((w == 0).sum()) for w in sp.dense_weights().values())
    densities = {s.name: s.density for s in sp.layer_stats()}
    flops = summarize(profile, densities, None)
    return {
        "checkpoint": str(path), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
        "execution": sp.execution, "task": task.name, **test,
        "sparsity": sp.actual_sparsity(), "zero_weights_fraction": zeros / sp.num_weights(),
        "itop_rate": sp.itop_rate(), "reliable_itop_rate": sp.reliable_itop_rate(), **flops,
    }


def evaluate_export(path: str | Path, data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy of an ``itop export`` file, run with its sparse layers, on its run's test split."""
    payload = read_export(path)
    meta = payload.get("meta") or {}
    if "config" not in meta:
        raise CheckpointError(f"{path} was not exported from an itop run (no run config); load it with "
                              "itop.sparse.load_export and evaluate it yourself")
    cfg = RunConfig.from_flat(meta["config"])
    if data_dir is not None:
        cfg = cfg.replace(data_dir=data_dir)
    dev = resolve_device(device)
    data = make_data(cfg)
    model = load_export(path, make_model(cfg, data), device=dev)
    task = make_task_for(cfg, data)
    test = task.metrics("test", *evaluate(model, data.loader("test", batch_size=256, shuffle=False), dev,
                                          task=task))
    layers = payload["layers"]
    nnz = sum(int(v["nnz"]) for v in layers.values())
    weights = sum(int(v["shape"][0]) * int(v["shape"][1]) for v in layers.values())
    return {
        "checkpoint": str(path), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
        "execution": "sparse", "task": task.name, **test,
        "sparsity": meta.get("sparsity"), "itop_rate": meta.get("itop_rate"),
        "sparse_layers": len(layers), "sparse_layers_density": nnz / max(weights, 1),
        "file_bytes": Path(path).stat().st_size,
        # numel() of a CSR tensor counts its dense entries: the model's size stored dense
        "dense_bytes": sum(v.numel() * v.element_size() for v in payload["state"].values()
                           if isinstance(v, torch.Tensor)),
    }
