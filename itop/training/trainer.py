"""One training run: build it from a config, resume it, train it, summarise it.

:class:`Trainer` turns a :class:`~itop.training.config.RunConfig` into library objects (through
:mod:`~itop.training.factories`), prepares the run folder (a fresh run, or a resume from a
checkpoint), runs :func:`~itop.training.loop.train` and writes the summary. Everything goes
into one run folder::

    config.yaml      the resolved config (method presets filled in)
    metrics.jsonl    one line per epoch and per topology update
    summary.json     best/final accuracies, R_s, sparsity, FLOPs, wall time
    best.pt          weights of the model selected by validation accuracy
    checkpoints/     ckpt-stepNNNNNNNNN.pt, the last ``keep_checkpoints`` of them
    tb/              TensorBoard events (when tensorboard is installed)

A run interrupted at any point and resumed (``resume="auto"``) finishes bit-identical to one
never interrupted (on CPU, same thread count): checkpoints hold the model, optimizer, LR
scheduler, sparsifier, FLOP counters, every RNG state and the position inside the epoch.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..errors import CheckpointError, ConfigError
from ..flops import TrainingFlops, dense_gradient_policy, profile_model, summarize
from ..methods import SparseConfig
from ..sparsifier import Sparsifier
from .checkpoint import (
    checkpoint_path,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import IDENTITY, KEYS, RunConfig, dump_config
from .factories import (
    float_dtype,
    input_spec,
    lr_lambda,
    make_amp,
    make_data,
    make_model,
    make_optimizer,
    make_sparsifier,
    make_task_for,
    resolve_device,
    wrap_model,
)
from .loop import train
from .metrics import MetricsLog, make_summary, write_summary
from .progress import StepInfo
from .selection import is_better, selection

__all__ = ["CHECKPOINT_FORMAT", "Trainer"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "itop-run-checkpoint"
CHECKPOINT_VERSION = 2  # 2: progress holds the last evaluated epoch


@dataclass
class Progress:
    """Where a run is: everything a checkpoint needs besides the objects' own state dicts."""

    epoch: int = 0
    batch: int = 0  # next (micro-)batch index inside ``epoch``
    step: int = 0
    elapsed: float = 0.0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # the selected epoch (see selection.py)
    last_eval: dict[str, Any] = field(default_factory=dict)  # val/test accuracy of the last evaluation


class Trainer:
    """One training run of a :class:`RunConfig`.

    Args:
        cfg: A validated run config.
        on_step: Optional ``fn(StepInfo)`` called after every optimizer step (the CLI's
            progress display, :mod:`~itop.training.progress`).
        masks: Initial masks (IMP rounds).
        init_state: Model weights loaded before training (IMP rewinding).
        capture_step: Keep the weights at this step (and write ``rewind.pt``), for IMP.
        sparse_config: The sparsifier config instead of the run's (an IMP round's static mask).
    """

    def __init__(
        self,
        cfg: RunConfig,
        on_step: Callable[[StepInfo], None] | None = None,
        *,
        masks: dict[str, torch.Tensor] | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        capture_step: int | None = None,
        sparse_config: SparseConfig | None = None,
    ):
        self.cfg = cfg
        self.on_step = on_step
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        distributed.init_from_env(cfg.dist_backend)
        self.device = resolve_device(cfg.device)
        self.rank = distributed.rank()
        self.world = distributed.world_size()
        self.is_main = self.rank == 0
        self.run_dir = Path(cfg.out_dir) / cfg.run_name()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics = MetricsLog(self.run_dir, enabled=self.is_main, tensorboard=cfg.tensorboard)
        self.metrics_path = self.metrics.path

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.data = make_data(cfg)
        self.train_loader = self.data.loader(
            "train", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, rank=self.rank,
            world_size=self.world, num_workers=cfg.num_workers,
        )
        eval_bs = max(cfg.batch_size, 256)
        self.val_loader = self._eval_loader("val", eval_bs) if self.data.val is not None else None
        self.test_loader = self._eval_loader("test", eval_bs)
        self.batches_per_epoch = len(self.train_loader)
        # Optimizer steps: one per group of ``accumulate`` micro-batches (a short last group too).
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accumulate)
        self.epochs = cfg.total_epochs
        self.total_steps = self.epochs * self.steps_per_epoch

        self.model = make_model(cfg, self.data).to(self.device)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(cfg, self.model, self.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, self.total_steps, self.steps_per_epoch))
        self.sparse_config = sparse_config or cfg.sparse_config()
        self.task = make_task_for(cfg, self.data)
        self.input_dtype = float_dtype(self.model)
        inputs = input_spec(self.data)
        self.sparsifier: Sparsifier = make_sparsifier(
            cfg, self.model, self.optimizer, self.total_steps, inputs, task=self.task,
            batches=self._init_batches(), masks=masks, config=self.sparse_config,
        )
        self.net: nn.Module = wrap_model(cfg, self.model, self.device)  # what the loop calls
        self.autocast, self.scaler = make_amp(cfg, self.device)
        # IMP rewinding: the weights at ``capture_step`` (0 = initialisation) are kept.
        self.capture_step = capture_step
        self.captured: dict[str, torch.Tensor] | None = None
        self.flop_profile = profile_model(self.model, inputs.shape, dtype=inputs.dtype)
        self.flops = TrainingFlops(self.flop_profile)
        self.dense_gradient = dense_gradient_policy(self.sparsifier.grow)
        self.progress = Progress()
        self.densities = self.layer_densities()
        self.last_checkpoint: Path | None = None

    # -- pieces the loop uses ------------------------------------------------------------------

    def _eval_loader(self, split: str, batch_size: int):
        return self.data.loader(split, batch_size=batch_size, shuffle=False, rank=self.rank,
                                world_size=self.world, num_workers=self.cfg.num_workers)

    def _init_batches(self) -> list | None:
        """Training batches for pruning at initialisation (SNIP, GraSP); data-order neutral."""
        sc = self.cfg.sparse_config()
        if sc.init_pruning not in ("snip", "grasp"):
            return None
        self.train_loader.set_epoch(0)
        batches = []
        for x, y in self.train_loader.iter_from(0):
            batches.append((x, y))
            if len(batches) >= sc.init_batches:
                break
        return batches

    def layer_densities(self) -> dict[str, float]:
        return {s.name: s.density for s in self.sparsifier.layer_stats()}

    def stop_requested(self) -> bool:
        """Whether the loop stops before the end of training (``max_steps`` reached)."""
        return self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps

    def capture(self) -> None:
        """Keep (and write to ``rewind.pt``) the weights at ``capture_step``, for IMP rewinding."""
        if self.capture_step is not None and self.progress.step == self.capture_step:
            self.captured = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.is_main:
                save_checkpoint({"format": "itop-rewind", "step": self.capture_step, "model": self.captured},
                                self.run_dir / "rewind.pt")

    def load_captured(self) -> dict[str, torch.Tensor] | None:
        """The captured weights, also when this run was restored past ``capture_step``."""
        if self.captured is None and (self.run_dir / "rewind.pt").is_file():
            state = load_checkpoint(self.run_dir / "rewind.pt", map_location=self.device)
            if state.get("step") == self.capture_step:
                self.captured = state["model"]
        return self.captured

    def select(self, record: dict[str, Any]) -> None:
        """Keep an evaluated epoch as the last evaluation and, if it is the best, as selected."""
        p = self.progress
        p.last_eval = {k: record[k] for k in ("val_acc", "test_acc", "test_loss") if k in record}
        if is_better(record, p.best):
            p.best = selection(record)
            if self.is_main:
                save_checkpoint({"format": "itop-model", "config": self.cfg.to_dict(),
                                 "model": self.model.state_dict(),
                                 "sparsifier": self.sparsifier.state_dict(),
                                 "epoch": record["epoch"]}, self.run_dir / "best.pt")

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_state(self, sums: list[float]) -> dict[str, Any]:
        p = self.progress
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "flops": self.flops.state_dict(),
            "rng": rng_state(),
            "progress": {**asdict(p), "loss_sum": sums[0], "correct": int(sums[1]), "seen": int(sums[2]),
                         "world_size": self.world},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "metrics_offset": self.metrics.offset(),
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current position (rank 0 writes; every rank must call)."""
        p = self.progress
        sums = torch.tensor([p.loss_sum, p.correct, p.seen], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum_(sums)
        if not self.is_main:
            return None
        path = save_checkpoint(self._checkpoint_state(sums.tolist()), checkpoint_path(self.ckpt_dir, p.step))
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source} is not an itop training checkpoint")
        saved = RunConfig.from_flat({k: v for k, v in state["config"].items() if k in KEYS})
        diff = [k for k, spec in KEYS.items() if spec.role == IDENTITY and saved.get(k) != self.cfg.get(k)]
        if diff:
            detail = ", ".join(f"{k}={saved.get(k)!r} (now {self.cfg.get(k)!r})" for k in diff)
            raise CheckpointError(
                f"checkpoint {source} belongs to another run: {detail}; use the same settings "
                "or start a new run with --name"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {source} does not fit model {self.cfg.model}: "
                                  f"{str(e).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        self.flops.load_state_dict(state["flops"])
        set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.progress = Progress(**{k: p[k] for k in ("epoch", "batch", "step", "elapsed",
                                                      "loss_sum", "correct", "seen", "best")},
                                 last_eval=p.get("last_eval") or self._last_eval_on_disk(state))
        if self.rank != 0:  # the checkpoint holds the partial epoch's sums over all ranks
            self.progress.loss_sum, self.progress.correct, self.progress.seen = 0.0, 0, 0
        saved_world = int(p.get("world_size", 1))
        if saved_world != self.world:
            # Same epoch; inside it, continue after the samples already seen (rounded down to a
            # whole batch of the new layout). Training continues correctly but is not
            # bit-identical to a run that kept the old number of ranks.
            self.progress.batch = (p["batch"] * saved_world) // self.world
            log.warning("checkpoint was written by %d ranks, resuming on %d: the epoch continues "
                        "from batch %d", saved_world, self.world, self.progress.batch)
        self.densities = self.layer_densities()
        self.metrics.truncate(state["metrics_offset"])
        self.last_checkpoint = source
        log.info("resumed from %s (epoch %d, step %d)", source, self.progress.epoch + 1, self.progress.step)

    def _last_eval_on_disk(self, state: dict[str, Any]) -> dict[str, Any]:
        """The last evaluation of a version-1 checkpoint (which did not hold it): from metrics."""
        import json

        last: dict[str, Any] = {}
        if self.metrics_path.exists():
            with self.metrics_path.open() as f:
                head = f.read(state["metrics_offset"])
            for line in head.splitlines():
                rec = json.loads(line)
                if rec.get("type") == "epoch" and "test_acc" in rec:
                    last = {k: rec[k] for k in ("val_acc", "test_acc") if k in rec}
        return last

    def _start_fresh(self) -> None:
        if self.is_main and (self.metrics_path.exists() or (self.run_dir / "summary.json").exists()):
            raise ConfigError(
                f"run folder {self.run_dir} already has results; use --resume auto to continue "
                "it, or --name/--out-dir for a new run"
            )

    def _resume_latest(self) -> None:
        found = load_latest(self.ckpt_dir, map_location=self.device)
        if found is None:
            log.info("no checkpoint in %s; starting from scratch", self.ckpt_dir)
            if self.is_main and self.metrics_path.exists():
                self.metrics_path.unlink()
        else:
            self._restore(found[1], found[0])

    def _resume_from(self, path: str) -> None:
        self._restore(load_checkpoint(Path(path), map_location=self.device), Path(path))

    def prepare_run_dir(self) -> None:
        """Start the run fresh, or resume it (``resume``: none, ``auto`` or a checkpoint path)."""
        modes = {None: self._start_fresh, "": self._start_fresh, "none": self._start_fresh,
                 "auto": self._resume_latest}
        resume = self.cfg.resume
        start = modes.get(resume)
        if start is not None:
            start()
        else:
            self._resume_from(resume)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.resolved_config(), self.run_dir / "config.yaml")
        distributed.barrier()

    def resolved_config(self) -> dict[str, Any]:
        out = self.cfg.resolved()
        out["resume"] = None
        return out

    # -- the run -------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``) and return the summary."""
        self.prepare_run_dir()
        train(self)
        return self.finish()

    def summary(self) -> dict[str, Any]:
        """The run's summary now (see :func:`itop.training.metrics.make_summary`)."""
        p = self.progress
        stats = self.sparsifier.stats(per_layer=False)
        return make_summary(
            run=self.cfg.run_name(), config={**self.cfg.resolved(), "sparsity": self.sparse_config.sparsity},
            task=self.task.name,
            epochs=self.epochs, steps=p.step, completed=p.epoch >= self.epochs,
            best=p.best, last_eval=p.last_eval,
            exploration={
                **{k: stats[k] for k in ("sparsity", "itop_rate", "reliable_itop_rate", "updates")},
                "lifetime": {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("lifetime/")},
                "lifetime_histogram": {str(k): v for k, v in sorted(self.sparsifier.tracker.lifetimes.items())},
            },
            update_interval=self.sparsifier.update_schedule.interval,
            flops=summarize(self.flop_profile, self.densities, self.flops),
            wall_time_s=p.elapsed, run_dir=str(self.run_dir),
        )

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` (main rank), close the logs, return the summary."""
        summary = self.summary()
        if self.is_main:
            write_summary(summary, self.run_dir / "summary.json")
        self.metrics.close()
        return summary
