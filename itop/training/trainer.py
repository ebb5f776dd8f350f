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

A run never loses what it had and never claims what it did not do:

* ``resume="auto"`` takes the newest checkpoint that loads and matches its checksum; when the run
  has checkpoints (or results) but none is usable it refuses, changing nothing, unless the user
  asks to start over (``resume="restart"``).
* Resuming with changed settings is refused (one line listing them) unless each is named in
  ``resume_override`` and can change mid-run (its ``midrun`` in the schema); then the new values
  are applied from the resume step, written to ``config.yaml`` and recorded in ``metrics.jsonl``
  as a ``{"type": "resume", ...}`` record at that step.
* SIGINT and SIGTERM (what SLURM and Kubernetes send before killing a job) stop the run after the
  current step with a checkpoint of that step, then raise :class:`~itop.errors.Interrupted`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..errors import CheckpointError, ConfigError, Interrupted
from ..flops import TrainingFlops, dense_gradient_policy, profile_model, summarize
from ..methods import SparseConfig
from ..sparsifier import Sparsifier
from .checkpoint import (
    checkpoint_path,
    find_checkpoints,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import KEYS, RunConfig, dump_config, resume_changes
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
CHECKPOINT_VERSION = 3  # 2: progress holds the last evaluated epoch; 3: the resolved config

#: Signals that stop a run gracefully: a checkpoint at the current step, then ``Interrupted``.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What --resume PATH errors advise.
_RESUME_FIX = ("resume from another checkpoint of the run (its checkpoints/ folder), or use --resume auto "
               "to take the newest good one")


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
        # Dense FLOPs per layer, profiled before the sparsifier (execution: sparse replaces the
        # linear layers by sparse ones, whose products the FLOP counter does not see).
        self.flop_profile = profile_model(self.model, inputs.shape, dtype=inputs.dtype)
        self.sparsifier: Sparsifier = make_sparsifier(
            cfg, self.model, self.optimizer, self.total_steps, inputs, task=self.task,
            batches=self._init_batches(), masks=masks, config=self.sparse_config,
        )
        self.net: nn.Module = wrap_model(cfg, self.model, self.device)  # what the loop calls
        self.autocast, self.scaler = make_amp(cfg, self.device)
        # IMP rewinding: the weights at ``capture_step`` (0 = initialisation) are kept.
        self.capture_step = capture_step
        self.captured: dict[str, torch.Tensor] | None = None
        self.flops = TrainingFlops(self.flop_profile)
        self.dense_gradient = dense_gradient_policy(self.sparsifier.grow)
        self.progress = Progress()
        self.densities = self.layer_densities()
        self.last_checkpoint: Path | None = None
        self._saved_step: int | None = None  # the step of the last checkpoint (every rank)
        self._stop_signal: int | None = None  # the signal asking this process to stop
        self._stopping = False  # every rank agreed to stop (see stop_requested)
        self._saving = False
        # The optimizer's hyperparameters as this config makes them, before a checkpoint's
        # replace them: a resume re-applies them (see _apply_config).
        self._config_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self._warn_about_data()

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

    def _warn_about_data(self) -> None:
        n = self.train_loader.num_samples
        if self.cfg.batch_size > n:
            log.warning("batch_size %d is larger than the training set (%d samples%s): every epoch is one "
                        "batch of %d; lower --batch-size", self.cfg.batch_size, n,
                        " on this rank" if self.world > 1 else "", n)

    def stop_requested(self) -> bool:
        """Whether the loop stops now: ``max_steps`` reached, or a stop signal (on any rank)."""
        if self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps:
            return True
        if distributed.is_distributed():  # all ranks must stop at the same step
            flag = torch.tensor([0.0 if self._stop_signal is None else 1.0], device=self.device)
            distributed.all_reduce_sum_(flag)
            self._stopping = bool(flag.item() > 0)
        else:
            self._stopping = self._stop_signal is not None
        return self._stopping

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
            "resolved_config": self.cfg.resolved(),
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
        self._saved_step = p.step
        if not self.is_main:
            return None
        self._saving = True
        try:
            path = save_checkpoint(self._checkpoint_state(sums.tolist()), checkpoint_path(self.ckpt_dir, p.step))
        finally:
            self._saving = False
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source} is not an itop training checkpoint")
        changes = self._check_contract(state, source)
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
        self._apply_config()
        self.densities = self.layer_densities()
        self.metrics.truncate(state["metrics_offset"])
        self.last_checkpoint = source
        self._saved_step = self.progress.step
        log.info("resumed from %s (epoch %d, step %d)", source, self.progress.epoch + 1, self.progress.step)
        if changes:
            self.metrics.write({"type": "resume", "epoch": self.progress.epoch + 1, "step": self.progress.step,
                                "checkpoint": str(source),
                                "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}})
            log.warning("resumed with %s from step %d", _changes_text(changes), self.progress.step)

    def _check_contract(self, state: dict[str, Any], source: Path) -> dict[str, tuple[Any, Any]]:
        """The settings this resume changes, all of them asked for and applicable; else refuse."""
        saved = state.get("resolved_config") or state.get("config") or {}
        identity, changes = resume_changes(saved, self.cfg)
        if identity:
            detail = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in identity.items())
            raise CheckpointError(
                f"checkpoint {source} belongs to another run: {detail}; use the same settings "
                "or start a new run with --name"
            )
        asked = set(self.cfg.resume_override)
        refused = {k: v for k, v in changes.items() if k not in asked}
        if refused:
            keys = ",".join(refused)
            raise CheckpointError(
                f"resuming from {source} would change {_changes_text(refused)}; drop those flags to "
                f"continue with the saved values, or apply the change from step {state['progress']['step']} "
                f"with --resume-override {keys}"
            )
        fixed = {k: KEYS[k].fixed_reason() for k in changes if KEYS[k].fixed_reason()}
        if fixed:
            why = "; ".join(f"{k} cannot change during a run: {reason}" for k, reason in fixed.items())
            raise CheckpointError(f"{why}; keep the saved value{'s' if len(fixed) > 1 else ''} or start a new "
                                  "run with --name")
        unchanged = sorted(asked - set(changes))
        if unchanged:
            log.warning("resume_override names %s, which %s not change (the checkpoint has the same values)",
                        ", ".join(unchanged), "does" if len(unchanged) == 1 else "do")
        return changes

    def _apply_config(self) -> None:
        """Make the optimizer and LR schedule follow this run's config after a checkpoint is loaded.

        ``Optimizer.load_state_dict`` brings back the hyperparameters it was saved with and
        ``LambdaLR`` its base learning rates; everything else (the schedule's function, the
        sparsifier's schedules and criteria, clipping, the loss) is built from this config. So the
        hyperparameters this config sets are put back, and the learning rate of the current step
        is computed from them as the scheduler would. Exact when nothing changed; the new values
        when ``resume_override`` allowed a change.
        """
        sched = self.scheduler
        for group, made in zip(self.optimizer.param_groups, self._config_groups, strict=True):
            for k, v in made.items():
                if k != "lr":
                    group[k] = v
        sched.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

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

    # -- the run folder ------------------------------------------------------------------------

    def _results(self) -> list[str]:
        """What this run folder holds that a fresh start would lose (file names)."""
        found = [f.name for f in (self.run_dir / "summary.json", self.run_dir / "best.pt") if f.is_file()]
        if self.metrics_path.is_file() and self.metrics_path.stat().st_size:
            found.append("metrics.jsonl")
        if find_checkpoints(self.ckpt_dir):
            found.append("checkpoints/")
        return found

    def _start_fresh(self) -> None:
        if self.is_main and self._results():
            raise ConfigError(
                f"run folder {self.run_dir} already has results ({', '.join(self._results())}); use "
                "--resume auto to continue it, --resume restart to start it over (deleting them), or "
                "--name/--out-dir for a new run"
            )

    def _restart(self) -> None:
        """Start over: delete what earlier attempts of this run wrote (the user asked for it)."""
        if not self.is_main:
            return
        for name in ("metrics.jsonl", "summary.json", "best.pt", "rewind.pt", "config.yaml"):
            (self.run_dir / name).unlink(missing_ok=True)
        for path in find_checkpoints(self.ckpt_dir):
            path.unlink(missing_ok=True)
        if (self.run_dir / "tb").is_dir():
            shutil.rmtree(self.run_dir / "tb", ignore_errors=True)
        log.info("starting %s over (--resume restart): its earlier results were deleted", self.run_dir)

    def _resume_latest(self) -> None:
        failures: list[CheckpointError] = []
        found = load_latest(self.ckpt_dir, map_location=self.device, failures=failures)
        if found is not None:
            self._restore(found[1], found[0])
            return
        if failures:
            raise CheckpointError(
                f"no checkpoint of {self.run_dir} is usable ({len(failures)} found, all damaged; the newest: "
                f"{str(failures[0]).split('; trying')[0]}); nothing was changed: start the run over with "
                "--resume restart (deletes its results) or resume from a copy of a good checkpoint"
            )
        epochs = self._epochs_on_disk()
        results = [r for r in self._results() if r != "metrics.jsonl" or epochs]
        if self.is_main and results:
            raise CheckpointError(
                f"run folder {self.run_dir} has results ({', '.join(results)}) but no checkpoint to "
                "resume from; nothing was changed: start the run over with --resume restart (deletes "
                "them), or use --name/--out-dir for a new run"
            )
        # Nothing to lose: at most the update records of a first epoch that never reached a
        # checkpoint, which starting from scratch writes again.
        log.info("no checkpoint in %s; starting from scratch", self.ckpt_dir)
        self.metrics.truncate(0)

    def _epochs_on_disk(self) -> bool:
        """Whether metrics.jsonl holds an epoch record (an epoch ended, so a checkpoint existed)."""
        if not self.metrics_path.is_file():
            return False
        with self.metrics_path.open(errors="replace") as f:
            return any('"type": "epoch"' in line for line in f)

    def _resume_from(self, path: str) -> None:
        source = Path(path)
        if source.is_dir():
            inside = find_checkpoints(source / "checkpoints") or find_checkpoints(source)
            example = f" (e.g. {inside[-1]})" if inside else ""
            raise CheckpointError(
                f"--resume {path} is a folder: --resume takes a checkpoint file{example}, or 'auto' for the "
                "newest good checkpoint of the run named by --out-dir and --name"
            )
        self._restore(load_checkpoint(source, map_location=self.device, fix=_RESUME_FIX), source)

    def prepare_run_dir(self) -> None:
        """Start the run fresh, or resume it (``resume``: none, ``auto``, ``restart`` or a checkpoint).

        Temporary files left by a checkpoint write that was killed are removed first.
        """
        if self.is_main:
            for folder in (self.run_dir, self.ckpt_dir):
                remove_stale_temporaries(folder)
        modes = {None: self._start_fresh, "": self._start_fresh, "none": self._start_fresh,
                 "auto": self._resume_latest, "restart": self._restart}
        resume = self.cfg.resume
        start = modes.get(resume)
        if start is not None:
            start()
        else:
            self._resume_from(resume)
        if self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create run folder {self.run_dir}: {e.strerror}; choose another "
                                  "--out-dir or --name") from None
            dump_config(self.resolved_config(), self.run_dir / "config.yaml")
        distributed.barrier()

    def resolved_config(self) -> dict[str, Any]:
        """What ``config.yaml`` holds: the resolved config, without this invocation's resume keys."""
        out = self.cfg.resolved()
        out["resume"] = None
        out["resume_override"] = []
        return out

    # -- the run -------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``) and return the summary.

        Raises:
            Interrupted: SIGINT or SIGTERM arrived; the run stopped after the step it was in and
                wrote a checkpoint of it (a second SIGINT stops at once, without one).
        """
        with self._stop_on_signals():  # a signal after the last step changes nothing: the run is done
            self.prepare_run_dir()
            train(self)
            if self._stopping and self.progress.epoch < self.epochs:
                self._stop()
            return self.finish()

    def _stop(self) -> None:
        """Checkpoint the current step (unless a checkpoint of it exists) and raise Interrupted."""
        if self._saved_step != self.progress.step:
            self.save()
        self.metrics.close()
        # No rank leaves before rank 0's checkpoint is on disk: under torchrun the first rank to
        # exit gets the others terminated, which could cut the checkpoint write short.
        distributed.barrier()
        path = self.last_checkpoint if self.is_main else None
        raise Interrupted(self._stop_signal or signal.SIGTERM, self.progress.step,
                          str(path) if path is not None else None)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM ask the loop to stop after the current step."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is None:
            self._stop_signal = signum
            log.warning("%s received: stopping after this step with a checkpoint (a second SIGINT stops "
                        "at once)", name)
        elif signum == signal.SIGINT and not self._saving:
            raise KeyboardInterrupt
        else:
            log.info("%s received again: already stopping", name)

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
                "parameters": self.sparsifier.num_parameters(),
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


def _changes_text(changes: dict[str, tuple[Any, Any]]) -> str:
    """``lr 0.1 -> 0.5, distribution 'erk' -> 'uniform'``."""
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
