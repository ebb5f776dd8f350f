"""The training loop of ``itop train``, top to bottom.

:func:`train` is the whole loop: epochs of optimizer steps, each step a group of
``accumulate`` micro-batches (forward, loss, backward each; one optimizer step for the group)
and then one sparsifier step; at the end of each epoch an evaluation and a checkpoint.
Everything it uses was built by :class:`~itop.training.trainer.Trainer` (model, optimizer,
sparsifier, task, loaders, metrics log), which also owns resuming and the summary.

Gradient accumulation (``accumulate: N``): the loader yields micro-batches of ``batch_size``;
consecutive groups of ``N`` of them (aligned to the start of the epoch; the epoch's last group
may be shorter) make one optimizer step. Each micro-batch's mean loss is weighted by its share
of the group's predictions, so a group's gradient is the gradient of the mean loss over all of
its samples, as for one batch of ``N x batch_size``; under DDP the gradient all-reduce runs
only for the group's last micro-batch (``no_sync``). The optimizer, gradient clipping, the
fp16 GradScaler, the LR scheduler and the sparsifier step once per group, so ΔT and every
schedule count optimizer steps, and RigL grows by the group's accumulated dense gradient.
Checkpoints fall on group boundaries only, so a resume continues bit-identically.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import distributed
from ..errors import DivergenceError
from ..flops import needs_dense_gradient
from .evaluate import evaluate
from .factories import no_sync
from .progress import StepInfo
from .tasks import full_precision

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .trainer import Trainer

__all__ = ["StepResult", "end_epoch", "micro_batch_groups", "train", "train_step"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step saw (summed over its micro-batches).

    Attributes:
        loss_sum: Training loss summed over the predictions (mean loss x predictions).
        correct: Correct predictions.
        predictions: Predictions (samples; tokens for a language model).
        samples: Samples (sequences for a language model).
        micro_batches: Micro-batches in the group.
        skipped: Whether the optimizer step was skipped (fp16 overflow).
    """

    loss_sum: float
    correct: int
    predictions: int
    samples: int
    micro_batches: int
    skipped: bool


def micro_batch_groups(batches: Iterator, start: int, size: int) -> Iterator[list]:
    """Groups of ``size`` consecutive micro-batches from ``batches`` (which begins at batch
    index ``start`` of the epoch), aligned to multiples of ``size`` from the epoch's start;
    the first group is shorter when ``start`` is not aligned, the last when the epoch ends."""
    group: list = []
    first = size - start % size  # micro-batches until the next group boundary
    for batch in batches:
        group.append(batch)
        if len(group) == first:
            yield group
            group, first = [], size
    if group:
        yield group


def train(t: Trainer) -> None:
    """Train from ``t.progress`` to the end of training (or ``max_steps``)."""
    cfg, p = t.cfg, t.progress
    start = time.perf_counter() - p.elapsed
    last_step = t.total_steps if cfg.max_steps is None else min(t.total_steps, cfg.max_steps)
    t.model.train()
    t.capture()
    while p.epoch < t.epochs:
        t.train_loader.set_epoch(p.epoch)
        epoch_start, first_step = time.perf_counter(), p.step
        for group in micro_batch_groups(t.train_loader.iter_from(p.batch), p.batch, cfg.accumulate):
            result = train_step(t, group)
            record = t.sparsifier.step(skip_update=result.skipped)
            p.step += 1
            t.capture()
            p.batch += result.micro_batches
            p.loss_sum += result.loss_sum
            p.correct += result.correct
            p.seen += result.predictions
            t.flops.add_steps(t.densities, steps=1, samples_per_step=result.samples,
                              dense_gradient=needs_dense_gradient(t.dense_gradient, record is not None))
            if record is not None:
                t.densities = t.layer_densities()
                t.metrics.write({"type": "update", "epoch": p.epoch + 1, **record})
            if t.on_step is not None:
                t.on_step(StepInfo(
                    epoch=p.epoch, epochs=t.epochs, step=math.ceil(p.batch / cfg.accumulate),
                    steps=t.steps_per_epoch, global_step=p.step, total_steps=last_step,
                    loss=p.loss_sum / max(p.seen, 1), seconds=time.perf_counter() - epoch_start,
                    done=p.step - first_step,
                ))
            if cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0:
                p.elapsed = time.perf_counter() - start
                t.save()
            if t.stop_requested():
                break
        if p.batch >= t.batches_per_epoch:  # the epoch is complete
            end_epoch(t, time.perf_counter() - epoch_start)
            p.epoch += 1
            p.batch = 0
            p.loss_sum, p.correct, p.seen = 0.0, 0, 0
            p.elapsed = time.perf_counter() - start
            t.save()
        if t.stop_requested():
            break
    p.elapsed = time.perf_counter() - start


def _inputs(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A micro-batch on the model's device; floating inputs in the model's dtype (token ids stay)."""
    x = x.to(t.device, dtype=t.input_dtype if x.is_floating_point() else None, non_blocking=True)
    if t.cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(t.device, non_blocking=True)


def train_step(t: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> StepResult:
    """One optimizer step on a group of micro-batches: forward, loss check and backward of each
    (weighted by its share of the group's predictions; DDP synchronises on the last only), then
    gradient clipping, the optimizer step (through the GradScaler under fp16) and the LR
    scheduler step, once."""
    cfg, p = t.cfg, t.progress
    counts = [t.task.count(y) for _, y in batches]
    total = sum(counts)
    t.optimizer.zero_grad(set_to_none=True)
    loss_sum, correct, samples = 0.0, 0, 0
    for i, ((x, y), count) in enumerate(zip(batches, counts, strict=True)):
        x, y = _inputs(t, x, y)
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else no_sync(t.net):
            with t.autocast() if t.autocast is not None else contextlib.nullcontext():
                out = t.net(x)
                loss = t.task.loss(full_precision(out), y)
            if not bool(torch.isfinite(loss)):
                if t.last_checkpoint:
                    advice = (f"the last good checkpoint is {t.last_checkpoint}; lower --lr (or set --grad-clip) "
                              "and continue from it with --resume auto --resume-override lr (or grad_clip)")
                else:
                    advice = ("no checkpoint was written yet; lower --lr (or set --grad-clip) and start over "
                              "with --resume restart")
                raise DivergenceError(
                    f"loss became {float(loss.detach())} at epoch {p.epoch + 1}, step {p.step + 1}; training "
                    f"stopped and {advice}"
                )
            part = loss if len(batches) == 1 else loss * (count / total)
            (t.scaler.scale(part) if t.scaler is not None else part).backward()
        loss_sum += float(loss.detach()) * count
        correct += int(t.task.correct(out.detach(), y))
        samples += len(y)
    skipped = False
    if t.scaler is not None:
        if cfg.grad_clip:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
        scale = t.scaler.get_scale()
        t.scaler.step(t.optimizer)  # skipped (no post-step hook) on overflow
        t.scaler.update()
        skipped = t.scaler.get_scale() < scale
    else:
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
        t.optimizer.step()
    t.scheduler.step()
    return StepResult(loss_sum, correct, total, samples, len(batches), skipped)


def end_epoch(t: Trainer, seconds: float) -> dict[str, Any]:
    """Evaluate, select, and write the epoch's record (metrics, TensorBoard, log line)."""
    cfg, p = t.cfg, t.progress
    epoch = p.epoch + 1
    train_sums = torch.tensor([p.loss_sum, p.correct, p.seen], dtype=torch.float64, device=t.device)
    distributed.all_reduce_sum_(train_sums)
    loss_sum, correct, seen = train_sums.tolist()
    record: dict[str, Any] = {
        "type": "epoch", "epoch": epoch, "step": p.step, "task": t.task.name,
        "lr": t.optimizer.param_groups[0]["lr"],
        **t.task.metrics("train", loss_sum / max(seen, 1), correct / max(seen, 1)),
    }
    # Only epochs at the final sparsity may be selected (gradual pruning is denser before).
    record["at_final_sparsity"] = t.sparsifier.at_final_sparsity()
    if epoch % cfg.eval_every == 0 or epoch == t.epochs:
        if t.val_loader is not None:
            record.update(t.task.metrics("val", *evaluate(t.model, t.val_loader, t.device, t.autocast, t.task)))
        record.update(t.task.metrics("test", *evaluate(t.model, t.test_loader, t.device, t.autocast, t.task)))
        t.select(record)
    stats = t.sparsifier.stats(per_layer=False)
    record.update({k: stats[k] for k in ("sparsity", "itop_rate", "reliable_itop_rate", "updates")})
    record["layers"] = {s.name: {"density": s.density, "itop_rate": s.itop_rate,
                                 "reliable_itop_rate": s.reliable_itop_rate}
                        for s in t.sparsifier.layer_stats()}
    record["seconds"] = seconds
    t.metrics.write(record)
    t.metrics.scalars(record, p.step)
    extra = "".join(f"  {k.split('_', 1)[1].replace('_', ' ')} {record[k]:.4f}" for k in record
                    if k.startswith("test_") and k not in ("test_loss", "test_acc"))
    log.info(
        "epoch %d/%d  loss %.4f  train %.4f  %s test %.4f%s  R_s %.4f  (%.1fs)",
        epoch, t.epochs, record["train_loss"], record["train_acc"],
        f"val {record['val_acc']:.4f} " if "val_acc" in record else "",
        record.get("test_acc", float("nan")), extra, record["itop_rate"], seconds,
    )
    return record
