"""Factories: config values -> library objects, through registries (never if-chains on names).

Each choice a run config makes by name is a :class:`~itop.registry.Registry` here: optimizers,
learning-rate schedules and mixed-precision modes (progress modes live with the progress
display, tasks with :mod:`~itop.training.tasks`). A new optimizer is one
``OPTIMIZERS.register`` call; the config validates against the same registry, so it is a flag
at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..data import DatasetSplits, load_dataset
from ..errors import ConfigError
from ..methods import from_config
from ..models import build_model
from ..registry import Registry
from ..sparsifier import Sparsifier
from .config import RunConfig
from .progress import PROGRESS_MODES
from .tasks import Task, make_task

__all__ = [
    "AMP_MODES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PROGRESS_MODES",
    "AmpMode",
    "InputSpec",
    "float_dtype",
    "input_spec",
    "lr_lambda",
    "make_amp",
    "make_data",
    "make_model",
    "make_optimizer",
    "make_sparsifier",
    "make_task_for",
    "no_sync",
    "resolve_device",
    "wrap_model",
]

# -- optimizers --------------------------------------------------------------------------------

#: ``fn(param_groups, lr, cfg) -> Optimizer``.
OPTIMIZERS: Registry[Callable[[list[dict], float, RunConfig], torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda groups, lr, cfg: torch.optim.SGD(
    groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0))
OPTIMIZERS.register("adam", lambda groups, lr, cfg: torch.optim.Adam(groups, lr=lr))
OPTIMIZERS.register("adamw", lambda groups, lr, cfg: torch.optim.AdamW(groups, lr=lr))

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def make_optimizer(cfg: RunConfig, model: nn.Module, world: int = 1) -> torch.optim.Optimizer:
    """The config's optimizer; optionally no weight decay on norms and biases.

    ``batch_size`` is per process and micro-batch; with ``lr_reference_batch`` the learning
    rate follows the linear scaling rule ``lr * global_batch / lr_reference_batch``, where the
    global batch of one optimizer step is ``batch_size * accumulate * world``.
    """
    lr = cfg.lr
    if cfg.lr_reference_batch:
        lr = cfg.lr * cfg.batch_size * cfg.accumulate * world / cfg.lr_reference_batch
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, _NORMS)
        for name, p in module.named_parameters(recurse=False):
            (no_decay if cfg.no_decay_norm and (is_norm or name == "bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return OPTIMIZERS.lookup(cfg.optimizer)(groups, lr, cfg)


# -- learning-rate schedules ---------------------------------------------------------------------

#: ``fn(cfg, total_steps, warmup_steps) -> factor(step)`` after the warm-up.
LR_SCHEDULES: Registry[Callable[[RunConfig, int, int], Callable[[int], float]]] = Registry("lr schedule")


@LR_SCHEDULES.register("step")
def _step_schedule(cfg: RunConfig, total_steps: int, warmup: int) -> Callable[[int], float]:
    """x ``lr_gamma`` at each milestone fraction of training (the paper: 1/2 and 3/4)."""
    milestones = [int(m * total_steps) for m in cfg.lr_milestones]
    return lambda step: cfg.lr_gamma ** sum(step >= m for m in milestones)


@LR_SCHEDULES.register("cosine")
def _cosine_schedule(cfg: RunConfig, total_steps: int, warmup: int) -> Callable[[int], float]:
    span = max(total_steps - warmup, 1)
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / span, 1.0)))


@LR_SCHEDULES.register("constant")
def _constant_schedule(cfg: RunConfig, total_steps: int, warmup: int) -> Callable[[int], float]:
    return lambda step: 1.0


def lr_lambda(cfg: RunConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step LR factor: linear warm-up over ``warmup_epochs``, then the config's schedule."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    after = LR_SCHEDULES.lookup(cfg.lr_schedule)(cfg, total_steps, warmup)

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else after(step)

    return factor


# -- mixed precision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmpMode:
    """Autocast dtype (``None``: full precision) and whether a GradScaler is needed."""

    dtype: torch.dtype | None
    scaler: bool = False


AMP_MODES: Registry[AmpMode] = Registry("amp mode")
AMP_MODES.register("none", AmpMode(None))
AMP_MODES.register("bf16", AmpMode(torch.bfloat16))
AMP_MODES.register("fp16", AmpMode(torch.float16, scaler=True))


# -- devices, data, model, sparsifier ------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` (the local GPU under torchrun, else GPU 0, else CPU), ``cpu``, ``cuda[:N]``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank() if distributed.is_distributed() else 0)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available; use --device cpu")
    return device


def make_data(cfg: RunConfig) -> DatasetSplits:
    """The dataset's train / val / test splits (options: ``data_args`` and ``data_file``)."""
    return load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.download, augment=cfg.augment,
                        **cfg.dataset_options())


@dataclass(frozen=True)
class InputSpec:
    """One input of the dataset, without the batch dimension: for the FLOP profile and SynFlow.

    Attributes:
        shape: ``(C, H, W)`` for images, ``(block_size,)`` for token sequences.
        dtype: ``torch.long`` for token ids; ``None`` for images (the model's float dtype).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None


def input_spec(data: DatasetSplits) -> InputSpec:
    """The shape and dtype of one input of ``data`` (token ids when it has a vocabulary)."""
    if data.vocab_size:
        return InputSpec((data.block_size,), torch.long)
    return InputSpec((data.in_channels, data.image_size, data.image_size))


def float_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (what floating inputs are cast
    to, so a float64 model takes the float32 batches of a dataset)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def make_model(cfg: RunConfig, data: DatasetSplits) -> nn.Module:
    """The config's model for the dataset's shape (``data.model_shape()``: class count and image
    geometry, or vocabulary size and context length) and the config's ``model_args``."""
    return build_model(cfg.model, **data.model_shape(), **cfg.model_args)


def make_task_for(cfg: RunConfig, data: DatasetSplits) -> Task:
    """The dataset's task (classification, language model), with the run's label smoothing."""
    return make_task(data.task, cfg.label_smoothing)


def wrap_model(cfg: RunConfig, model: nn.Module, device: torch.device) -> nn.Module:
    """The network the loop calls: DDP (under torchrun) and/or compiled, around ``model``'s
    parameters (the sparsifier, checkpoints and evaluation use ``model`` itself)."""
    net = model
    if distributed.is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def no_sync(net: nn.Module) -> contextlib.AbstractContextManager:
    """A context in which backward passes of ``net`` skip DDP's gradient all-reduce (for every
    micro-batch of an accumulation group but the last); a no-op without DDP."""
    ddp = getattr(net, "_orig_mod", net)  # under torch.compile
    if isinstance(ddp, nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def make_amp(cfg: RunConfig, device: torch.device) -> tuple[Callable[[], Any] | None, Any]:
    """``(autocast context factory or None, GradScaler or None)`` for the config's ``amp``."""
    amp = AMP_MODES.lookup(cfg.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp.dtype)) if amp.dtype else None
    return autocast, torch.amp.GradScaler(device.type) if amp.scaler else None


def make_sparsifier(cfg: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    total_steps: int, inputs: InputSpec, *, task: Task | None = None,
                    batches: list | None = None, masks: dict[str, torch.Tensor] | None = None,
                    config: Any = None) -> Sparsifier:
    """The run's sparsifier (``config``: a SparseConfig other than the run's, e.g. an IMP round).

    ``inputs`` gives SynFlow its input (token ids for a language model) and ``task`` gives SNIP
    and GraSP the run's loss.
    """
    return from_config(config or cfg.sparse_config(), model, optimizer, total_steps,
                       batches=batches, input_shape=inputs.shape, input_dtype=inputs.dtype,
                       loss_fn=task.loss if task is not None else None, masks=masks)
