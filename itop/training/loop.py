"""The training loop of ``itop train``, top to bottom.

:func:`train` is the whole loop: epochs of steps, each step a forward, a backward, an optimizer
step and a sparsifier step; at the end of each epoch an evaluation and a checkpoint. Everything
it uses was built by :class:`~itop.training.trainer.Trainer` (model, optimizer, sparsifier,
loaders, metrics log), which also owns resuming and the summary.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import distributed
from ..errors import DivergenceError
from ..flops import needs_dense_gradient
from .evaluate import evaluate

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["end_epoch", "train", "train_step"]

log = logging.getLogger(__name__)


def train(t: Trainer) -> None:
    """Train from ``t.progress`` to the end of training (or ``max_steps``)."""
    cfg, p = t.cfg, t.progress
    start = time.perf_counter() - p.elapsed
    t.model.train()
    t.capture()
    while p.epoch < t.epochs:
        t.train_loader.set_epoch(p.epoch)
        epoch_start = time.perf_counter()
        for x, y in t.train_loader.iter_from(p.batch):
            loss, out, skipped = train_step(t, x, y)
            record = t.sparsifier.step(skip_update=skipped)
            p.step += 1
            t.capture()
            p.batch += 1
            p.loss_sum += float(loss.detach()) * y.numel()
            p.correct += int((out.detach().argmax(1) == y).sum())
            p.seen += y.numel()
            t.flops.add_steps(t.densities, steps=1, samples_per_step=y.numel(),
                              dense_gradient=needs_dense_gradient(t.dense_gradient, record is not None))
            if record is not None:
                t.densities = t.layer_densities()
                t.metrics.write({"type": "update", "epoch": p.epoch + 1, **record})
            if t.on_step is not None:
                t.on_step(p.epoch, p.batch, t.steps_per_epoch)
            if cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0:
                p.elapsed = time.perf_counter() - start
                t.save()
            if t.stop_requested():
                break
        if p.batch >= t.steps_per_epoch:  # the epoch is complete
            end_epoch(t, time.perf_counter() - epoch_start)
            p.epoch += 1
            p.batch = 0
            p.loss_sum, p.correct, p.seen = 0.0, 0, 0
            p.elapsed = time.perf_counter() - start
            t.save()
        if t.stop_requested():
            break
    p.elapsed = time.perf_counter() - start


def train_step(t: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Forward, loss check, backward and optimizer step of one batch.

    Returns:
        The loss, the output, and whether the optimizer step was skipped (fp16 overflow).
    """
    cfg, p = t.cfg, t.progress
    x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with t.autocast() if t.autocast is not None else contextlib.nullcontext():
        out = t.net(x)
        loss = t.loss_fn(out.float(), y)
    if not bool(torch.isfinite(loss)):
        if t.last_checkpoint:
            advice = (f"the last good checkpoint is {t.last_checkpoint}; lower --lr (or set --grad-clip) and "
                      "continue from it with --resume auto --resume-override lr (or grad_clip)")
        else:
            advice = "no checkpoint was written yet; lower --lr (or set --grad-clip) and start over with --resume restart"
        raise DivergenceError(
            f"loss became {float(loss.detach())} at epoch {p.epoch + 1}, step {p.step + 1}; training "
            f"stopped and {advice}"
        )
    t.optimizer.zero_grad(set_to_none=True)
    skipped = False
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
        if cfg.grad_clip:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
        scale = t.scaler.get_scale()
        t.scaler.step(t.optimizer)  # skipped (no post-step hook) on overflow
        t.scaler.update()
        skipped = t.scaler.get_scale() < scale
    else:
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
        t.optimizer.step()
    t.scheduler.step()
    return loss, out, skipped


def end_epoch(t: Trainer, seconds: float) -> dict[str, Any]:
    """Evaluate, select, and write the epoch's record (metrics, TensorBoard, log line)."""
    cfg, p = t.cfg, t.progress
    epoch = p.epoch + 1
    train_sums = torch.tensor([p.loss_sum, p.correct, p.seen], dtype=torch.float64, device=t.device)
    distributed.all_reduce_sum_(train_sums)
    loss_sum, correct, seen = train_sums.tolist()
    record: dict[str, Any] = {
        "type": "epoch", "epoch": epoch, "step": p.step,
        "lr": t.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
    }
    if epoch % cfg.eval_every == 0 or epoch == t.epochs:
        if t.val_loader is not None:
            record["val_loss"], record["val_acc"] = evaluate(t.model, t.val_loader, t.device, t.autocast)
        record["test_loss"], record["test_acc"] = evaluate(t.model, t.test_loader, t.device, t.autocast)
        t.select(record)
    stats = t.sparsifier.stats(per_layer=False)
    record.update({k: stats[k] for k in ("sparsity", "itop_rate", "reliable_itop_rate", "updates")})
    record["layers"] = {s.name: {"density": s.density, "itop_rate": s.itop_rate,
                                 "reliable_itop_rate": s.reliable_itop_rate}
                        for s in t.sparsifier.layer_stats()}
    record["seconds"] = seconds
    t.metrics.write(record)
    t.metrics.scalars(record, p.step)
    log.info(
        "epoch %d/%d  loss %.4f  train %.4f  %s test %.4f  R_s %.4f  (%.1fs)",
        epoch, t.epochs, record["train_loss"], record["train_acc"],
        f"val {record['val_acc']:.4f} " if "val_acc" in record else "",
        record.get("test_acc", float("nan")), record["itop_rate"], seconds,
    )
    return record
