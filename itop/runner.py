"""The training runner behind ``itop train``: data, model, optimizer, sparsifier, loop, outputs.

:class:`Trainer` turns a :class:`~itop.config.RunConfig` into library objects and trains.
Everything it writes goes into one run folder::

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

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .checkpoint import (
    checkpoint_path,
    load_checkpoint,
    load_latest,
    prune_checkpoints,
    save_checkpoint,
)
from .config import RunConfig, dump_config
from .data import load_dataset
from .errors import CheckpointError, ConfigError, DivergenceError
from .flops import TrainingFlops, dense_gradient_policy, profile_model, summarize
from .methods import from_config
from .models import build_model
from .sparsifier import Sparsifier

__all__ = ["Trainer", "evaluate", "evaluate_checkpoint", "lr_lambda", "make_optimizer", "run_training", "train_imp"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "itop-run-checkpoint"
# Keys that define a run: a checkpoint only resumes a run that agrees on all of them.
RUN_IDENTITY = ("model", "dataset", "method", "sparsity", "batch_size", "epochs", "multiplier", "seed")


def resolve_device(name: str) -> torch.device:
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


def make_optimizer(cfg: RunConfig, model: nn.Module, world: int = 1) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam/AdamW; optionally no weight decay on norms and biases.

    ``batch_size`` is per process; with ``lr_reference_batch`` the learning rate follows the
    linear scaling rule ``lr * batch_size * world / lr_reference_batch``.
    """
    lr = cfg.lr
    if cfg.lr_reference_batch:
        lr = cfg.lr * cfg.batch_size * world / cfg.lr_reference_batch
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for name, p in module.named_parameters(recurse=False):
            (no_decay if cfg.no_decay_norm and (is_norm or name == "bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def lr_lambda(cfg: RunConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step LR factor: linear warm-up, then step decay (x gamma at each milestone
    fraction of training, the paper's 1/2 and 3/4), cosine, or constant."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    milestones = [int(m * total_steps) for m in cfg.lr_milestones]
    schedule, gamma = cfg.lr_schedule, cfg.lr_gamma

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "step":
            return gamma ** sum(step >= m for m in milestones)
        if schedule == "cosine":
            p = (step - warmup) / max(total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))
        return 1.0

    return factor


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
        with autocast() if autocast is not None else _nullcontext():
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


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Progress:
    epoch: int = 0
    batch: int = 0  # next batch index inside ``epoch``
    step: int = 0
    elapsed: float = 0.0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    best: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One training run of a :class:`RunConfig`.

    Args:
        cfg: A validated run config.
        on_step: Optional ``fn(epoch, batch, steps_per_epoch)`` called after every step
            (the CLI draws its progress bar with it).
    """

    def __init__(
        self,
        cfg: RunConfig,
        on_step: Callable[[int, int, int], None] | None = None,
        *,
        masks: dict[str, torch.Tensor] | None = None,
        init_state: dict[str, torch.Tensor] | None = None,
        capture_step: int | None = None,
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
        self.metrics_path = self.run_dir / "metrics.jsonl"

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.data = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.download,
                                 augment=cfg.augment)
        self.train_loader = self.data.loader(
            "train", batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, rank=self.rank,
            world_size=self.world, num_workers=cfg.num_workers,
        )
        eval_bs = max(cfg.batch_size, 256)
        self.val_loader = self._eval_loader("val", eval_bs) if self.data.val is not None else None
        self.test_loader = self._eval_loader("test", eval_bs)
        self.steps_per_epoch = len(self.train_loader)
        self.epochs = max(1, int(round(cfg.epochs * cfg.multiplier)))
        self.total_steps = self.epochs * self.steps_per_epoch

        self.model = build_model(cfg.model, in_channels=self.data.in_channels,
                                 num_classes=self.data.num_classes,
                                 image_size=self.data.image_size).to(self.device)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(cfg, self.model, self.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, self.total_steps, self.steps_per_epoch))
        self.sparse_config = cfg.sparse_config()
        shape = (self.data.in_channels, self.data.image_size, self.data.image_size)
        self.sparsifier: Sparsifier = from_config(
            self.sparse_config, self.model, self.optimizer, self.total_steps,
            batches=self._init_batches(), input_shape=shape, masks=masks,
        )
        # The network the loop calls: DDP and/or compiled around the same parameters.
        self.net: nn.Module = self.model
        if distributed.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype else None
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        # IMP rewinding: the weights at ``capture_step`` (0 = initialisation) are kept.
        self.capture_step = capture_step
        self.captured: dict[str, torch.Tensor] | None = None
        self.flop_profile = profile_model(self.model, shape)
        self.flops = TrainingFlops(self.flop_profile)
        self.dense_gradient = dense_gradient_policy(self.sparsifier.grow)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.progress = _Progress()
        self._densities = self._layer_densities()
        self._tb = None

    # -- helpers -------------------------------------------------------------------------------

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

    def _capture(self) -> None:
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

    def _layer_densities(self) -> dict[str, float]:
        return {s.name: s.density for s in self.sparsifier.layer_stats()}

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _tensorboard(self):
        if self._tb is None and self.cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb or None

    def _checkpoint_state(self, sums: list[float]) -> dict[str, Any]:
        p = self.progress
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "flops": self.flops.state_dict(),
            "rng": _rng_state(),
            "progress": {
                "epoch": p.epoch, "batch": p.batch, "step": p.step, "elapsed": p.elapsed,
                "loss_sum": sums[0], "correct": int(sums[1]), "seen": int(sums[2]), "best": p.best,
                "world_size": self.world,
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "metrics_offset": self.metrics_path.stat().st_size if self.metrics_path.exists() else 0,
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
        return path

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source} is not an itop training checkpoint")
        saved = state["config"]
        diff = [k for k in RUN_IDENTITY if saved.get(k) != getattr(self.cfg, k)]
        if diff:
            detail = ", ".join(f"{k}={saved.get(k)!r} (now {getattr(self.cfg, k)!r})" for k in diff)
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
        _set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        p = state["progress"]
        self.progress = _Progress(**{k: p[k] for k in ("epoch", "batch", "step", "elapsed",
                                                       "loss_sum", "correct", "seen", "best")})
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
        self._densities = self._layer_densities()
        if self.is_main and self.metrics_path.exists():
            with self.metrics_path.open("r+") as f:
                f.truncate(state["metrics_offset"])
        log.info("resumed from %s (epoch %d, step %d)", source, self.progress.epoch + 1, self.progress.step)

    def _prepare_run_dir(self) -> None:
        resume = self.cfg.resume
        if resume in (None, "", "none"):
            if self.is_main and (self.metrics_path.exists() or (self.run_dir / "summary.json").exists()):
                raise ConfigError(
                    f"run folder {self.run_dir} already has results; use --resume auto to continue "
                    "it, or --name/--out-dir for a new run"
                )
        elif resume == "auto":
            found = load_latest(self.ckpt_dir, map_location=self.device)
            if found is None:
                log.info("no checkpoint in %s; starting from scratch", self.ckpt_dir)
                if self.is_main and self.metrics_path.exists():
                    self.metrics_path.unlink()
            else:
                self._restore(found[1], found[0])
        else:
            path = Path(resume)
            self._restore(load_checkpoint(path, map_location=self.device), path)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.resolved_config(), self.run_dir / "config.yaml")
        distributed.barrier()

    def resolved_config(self) -> dict[str, Any]:
        out = self.cfg.resolved()
        out["resume"] = None
        return out

    # -- training ------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to the end (or ``max_steps``) and return the summary."""
        self._prepare_run_dir()
        cfg, p = self.cfg, self.progress
        start = time.perf_counter() - p.elapsed
        last_ckpt: Path | None = None
        self.model.train()
        self._capture()
        while p.epoch < self.epochs:
            self.train_loader.set_epoch(p.epoch)
            epoch_start = time.perf_counter()
            for x, y in self.train_loader.iter_from(p.batch):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if cfg.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self.autocast() if self.autocast is not None else _nullcontext():
                    out = self.net(x)
                    loss = self.loss_fn(out.float(), y)
                if not bool(torch.isfinite(loss)):
                    where = f"epoch {p.epoch + 1}, step {p.step + 1}"
                    good = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
                    raise DivergenceError(
                        f"loss became {float(loss.detach())} at {where}; training stopped and {good}; "
                        "lower --lr (or set --grad-clip) and resume with --resume auto"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                skipped = False
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    scale = self.scaler.get_scale()
                    self.scaler.step(self.optimizer)  # skipped (no post-step hook) on overflow
                    self.scaler.update()
                    skipped = self.scaler.get_scale() < scale
                else:
                    loss.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    self.optimizer.step()
                self.scheduler.step()
                record = self.sparsifier.step(skip_update=skipped)
                p.step += 1
                self._capture()
                p.batch += 1
                p.loss_sum += float(loss.detach()) * y.numel()
                p.correct += int((out.detach().argmax(1) == y).sum())
                p.seen += y.numel()
                dense_grad = self.dense_gradient == "always" or (
                    self.dense_gradient == "update" and record is not None)
                self.flops.add_steps(self._densities, steps=1, samples_per_step=y.numel(),
                                     dense_gradient=dense_grad)
                if record is not None:
                    self._densities = self._layer_densities()
                    self._write_metrics({"type": "update", "epoch": p.epoch + 1, **record})
                if self.on_step is not None:
                    self.on_step(p.epoch, p.batch, self.steps_per_epoch)
                if cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0:
                    p.elapsed = time.perf_counter() - start
                    last_ckpt = self.save() or last_ckpt
                if cfg.max_steps is not None and p.step >= cfg.max_steps:
                    break
            stopped_early = p.batch < self.steps_per_epoch
            if not stopped_early:
                self._end_epoch(time.perf_counter() - epoch_start)
                p.epoch += 1
                p.batch = 0
                p.loss_sum, p.correct, p.seen = 0.0, 0, 0
                p.elapsed = time.perf_counter() - start
                last_ckpt = self.save() or last_ckpt
            if cfg.max_steps is not None and p.step >= cfg.max_steps:
                break
        p.elapsed = time.perf_counter() - start
        return self._finish()

    def _end_epoch(self, seconds: float) -> None:
        cfg, p = self.cfg, self.progress
        epoch = p.epoch + 1
        train = torch.tensor([p.loss_sum, p.correct, p.seen], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum_(train)
        loss_sum, correct, seen = train.tolist()
        record: dict[str, Any] = {
            "type": "epoch", "epoch": epoch, "step": p.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
        }
        if epoch % cfg.eval_every == 0 or epoch == self.epochs:
            if self.val_loader is not None:
                record["val_loss"], record["val_acc"] = evaluate(self.model, self.val_loader, self.device, self.autocast)
            record["test_loss"], record["test_acc"] = evaluate(self.model, self.test_loader, self.device, self.autocast)
            self._select(record)
        stats = self.sparsifier.stats(per_layer=False)
        record.update({k: stats[k] for k in ("sparsity", "itop_rate", "reliable_itop_rate", "updates")})
        record["layers"] = {s.name: {"density": s.density, "itop_rate": s.itop_rate,
                                     "reliable_itop_rate": s.reliable_itop_rate}
                            for s in self.sparsifier.layer_stats()}
        record["seconds"] = seconds
        self._write_metrics(record)
        tb = self._tensorboard()
        if tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    tb.add_scalar(k, v, p.step)
            tb.flush()
        log.info(
            "epoch %d/%d  loss %.4f  train %.4f  %s test %.4f  R_s %.4f  (%.1fs)",
            epoch, self.epochs, record["train_loss"], record["train_acc"],
            f"val {record['val_acc']:.4f} " if "val_acc" in record else "",
            record.get("test_acc", float("nan")), record["itop_rate"], seconds,
        )

    def _select(self, record: dict[str, Any]) -> None:
        """Model selection by validation accuracy (the last epoch when there is no val set)."""
        p = self.progress
        score = record.get("val_acc", float("-inf"))
        if not p.best or score > p.best["val_acc"] or "val_acc" not in record:
            p.best = {"epoch": record["epoch"], "val_acc": score, "test_acc": record["test_acc"]}
            if self.is_main:
                save_checkpoint({"format": "itop-model", "config": self.cfg.to_dict(),
                                 "model": self.model.state_dict(),
                                 "sparsifier": self.sparsifier.state_dict(),
                                 "epoch": record["epoch"]}, self.run_dir / "best.pt")

    def _finish(self) -> dict[str, Any]:
        p = self.progress
        last = None
        for line in self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []:
            rec = json.loads(line)
            if rec.get("type") == "epoch" and "test_acc" in rec:
                last = rec
        stats = self.sparsifier.stats(per_layer=False)
        summary: dict[str, Any] = {
            "run": self.cfg.run_name(),
            "method": self.cfg.method, "model": self.cfg.model, "dataset": self.cfg.dataset,
            "target_sparsity": self.sparse_config.sparsity, "seed": self.cfg.seed,
            "epochs": self.epochs, "steps": p.step, "completed": p.epoch >= self.epochs,
            "selected_epoch": p.best.get("epoch"),
            "best_val_acc": p.best.get("val_acc") if p.best.get("val_acc") != float("-inf") else None,
            "test_acc_selected": p.best.get("test_acc"),
            "final_val_acc": last.get("val_acc") if last else None,
            "final_test_acc": last.get("test_acc") if last else None,
            "sparsity": stats["sparsity"],
            "itop_rate": stats["itop_rate"],
            "reliable_itop_rate": stats["reliable_itop_rate"],
            "updates": stats["updates"],
            "lifetime": {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("lifetime/")},
            # lifetime in steps -> number of pruned weights that lived that long
            "lifetime_histogram": {str(k): v for k, v in sorted(self.sparsifier.tracker.lifetimes.items())},
            "update_interval": self.sparsifier.update_schedule.interval,
            "batch_size": self.cfg.batch_size, "multiplier": self.cfg.multiplier,
            **summarize(self.flop_profile, self._densities, self.flops),
            "wall_time_s": p.elapsed,
            "run_dir": str(self.run_dir),
        }
        if self.is_main:
            tmp = self.run_dir / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, self.run_dir / "summary.json")
        tb = self._tensorboard()
        if tb:
            tb.close()
        return summary


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy, sparsity, R_s and FLOPs of a saved model (``best.pt`` or a checkpoint)."""
    from .config import RunConfig as _RunConfig

    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an itop checkpoint (no config/model); pass best.pt or a ckpt-*.pt")
    cfg = _RunConfig(**state["config"])
    if data_dir is not None:
        cfg.data_dir = data_dir
    dev = resolve_device(device)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, download=cfg.download)
    model = build_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes,
                        image_size=data.image_size).to(dev)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit model {cfg.model}: {str(e).splitlines()[0]}") from None
    sp = from_config(cfg.sparse_config(), model, None, total_steps=10**9)
    sp.load_state_dict(state["sparsifier"])
    loader = data.loader("test", batch_size=256, shuffle=False)
    test_loss, test_acc = evaluate(model, loader, dev)
    weights = dict(model.named_parameters())
    zeros = sum(int((weights[n] == 0).sum()) for n in sp.layer_names())
    profile = profile_model(model, (data.in_channels, data.image_size, data.image_size))
    densities = {s.name: s.density for s in sp.layer_stats()}
    flops = summarize(profile, densities, None)
    return {
        "checkpoint": str(path), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
        "test_loss": test_loss, "test_acc": test_acc,
        "sparsity": sp.actual_sparsity(), "zero_weights_fraction": zeros / sp.num_weights(),
        "itop_rate": sp.itop_rate(), "reliable_itop_rate": sp.reliable_itop_rate(), **flops,
    }


def _global_magnitude_masks(model: nn.Module, sparsifier: Sparsifier, keep: int) -> dict[str, torch.Tensor]:
    """Masks keeping the ``keep`` largest-magnitude active weights over all sparsified layers."""
    from .pruning import global_topk

    params = dict(model.named_parameters())
    current = sparsifier.masks()
    scores = {n: torch.where(m, params[n].detach().abs().float(), torch.full_like(params[n], -1.0, dtype=torch.float32))
              for n, m in current.items()}
    return global_topk(scores, keep)


def train_imp(cfg: RunConfig, on_step: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Iterative magnitude pruning with rewinding (lottery tickets).

    Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019; Frankle et al., "Linear Mode
    Connectivity and the Lottery Ticket Hypothesis", ICML 2020 (rewinding to step k). Round 0
    trains the dense model; each of the ``rounds`` pruning steps then removes the same fraction
    of the remaining weights by global magnitude, rewinds the survivors to their values at
    ``rewind_step`` of round 0, and retrains; the last round trains at the target sparsity.
    Every round writes its own run folder (``<name>/round-K``) and summary; the run folder gets
    a final summary whose R_s counts every weight active in any round (1.0: round 0 is dense)
    and whose training FLOPs add up all rounds.
    """
    import dataclasses

    sc = cfg.sparse_config()
    rounds = sc.rounds
    keep_fraction = (1.0 - cfg.sparsity) ** (1.0 / rounds)
    base = cfg.run_name()
    root = Path(cfg.out_dir) / base
    masks = None
    rewind: dict[str, torch.Tensor] | None = None
    summaries = []
    union: dict[str, torch.Tensor] | None = None
    training_flops = 0.0
    dense_run_flops = None
    trainer = None
    for k in range(rounds + 1):
        sparsity = 1.0 - keep_fraction**k if k < rounds else cfg.sparsity
        round_cfg = dataclasses.replace(cfg, name=f"{base}/round-{k}", sparsity=0.0 if k == 0 else round(sparsity, 6))
        trainer = Trainer(round_cfg, on_step, masks=masks, init_state=rewind,
                          capture_step=sc.rewind_step if k == 0 else None)
        log.info("IMP round %d/%d: sparsity %.4f", k, rounds, trainer.sparsifier.actual_sparsity())
        summary = trainer.fit()
        summaries.append(summary)
        if k == 0:
            if trainer.load_captured() is None:
                raise ConfigError(
                    f"rewind_step {sc.rewind_step} is beyond round 0's {trainer.progress.step} steps; lower it"
                )
            rewind = trainer.captured
            dense_run_flops = trainer.flops.dense_equivalent
        training_flops += trainer.flops.total
        round_masks = trainer.sparsifier.masks()
        union = round_masks if union is None else {n: union[n] | m for n, m in round_masks.items()}
        if k < rounds:
            keep = round(keep_fraction ** (k + 1) * trainer.sparsifier.num_weights())
            masks = _global_magnitude_masks(trainer.model, trainer.sparsifier, keep)
    final = dict(summaries[-1])
    total = sum(m.numel() for m in union.values())
    final.update({
        "run": base, "method": "imp", "rounds": rounds, "run_dir": str(root),
        "itop_rate": sum(int(m.sum()) for m in union.values()) / total,
        "training_flops": training_flops,
        "training_flops_relative": training_flops / dense_run_flops if dense_run_flops else None,
        "round_summaries": [
            {"round": i, "sparsity": s["sparsity"], "test_acc_selected": s["test_acc_selected"],
             "final_test_acc": s["final_test_acc"], "run_dir": s["run_dir"]} for i, s in enumerate(summaries)
        ],
        "wall_time_s": sum(s["wall_time_s"] for s in summaries),
    })
    if trainer.is_main:
        root.mkdir(parents=True, exist_ok=True)
        (root / "summary.json").write_text(json.dumps(final, indent=2) + "\n")
        dump_config(cfg.resolved(), root / "config.yaml")
    return final


def run_training(cfg: RunConfig, on_step: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Train one config: a single run, or the rounds of iterative magnitude pruning."""
    if cfg.sparse_config().rounds > 1:
        return train_imp(cfg, on_step)
    return Trainer(cfg, on_step).fit()
