"""Orchestration: from a run config to results (the layer behind ``itop train`` and ``itop sweep``).

* :mod:`~itop.training.config`: the run config schema (flat keys, YAML, ``--key value``);
* :mod:`~itop.training.factories`: config values -> model, data, optimizer, schedule, sparsifier;
* :mod:`~itop.training.loop`: the training loop, top to bottom (gradient accumulation included);
* :mod:`~itop.training.tasks`: what a model predicts and how it is scored (classification, language model);
* :mod:`~itop.training.progress`: the progress bar / lines within an epoch;
* :mod:`~itop.training.trainer`: one run: build, resume, train, summarise;
* :mod:`~itop.training.checkpoint`: atomic checkpoints, safe loads, RNG state;
* :mod:`~itop.training.metrics`: ``metrics.jsonl`` and the ``summary.json`` schema;
* :mod:`~itop.training.selection`: which epoch a run reports (by validation accuracy);
* :mod:`~itop.training.evaluate`: evaluation of a model or a saved checkpoint;
* :mod:`~itop.training.imp`: lottery-ticket runs, one folder per round;
* :mod:`~itop.training.sweep`: grids of runs from one study file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import NEVER, RunConfig, load_config
from .evaluate import evaluate, evaluate_checkpoint
from .factories import lr_lambda, make_optimizer
from .imp import train_imp
from .progress import StepInfo
from .trainer import Trainer

__all__ = [
    "NEVER",
    "RunConfig",
    "StepInfo",
    "Trainer",
    "evaluate",
    "evaluate_checkpoint",
    "load_config",
    "lr_lambda",
    "make_optimizer",
    "run_training",
    "train_imp",
]


def run_training(cfg: RunConfig, on_step: Callable[[StepInfo], None] | None = None) -> dict[str, Any]:
    """Train one config: a single run, or the rounds of iterative magnitude pruning."""
    if cfg.sparse_config().rounds > 1:
        return train_imp(cfg, on_step)
    return Trainer(cfg, on_step).fit()
