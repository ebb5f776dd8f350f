"""What a run writes as it trains: ``metrics.jsonl``, TensorBoard events and ``summary.json``.

``metrics.jsonl`` has one JSON object per line: ``{"type": "epoch", ...}`` at the end of every
epoch (losses, accuracies, lr, R_s, reliable R_s, per-layer density and R_s, seconds) and
``{"type": "update", ...}`` at every topology update (dropped, grown, R_s, ...).

``summary.json`` follows one schema, :func:`make_summary`, used both by the trainer when a
run ends and by ``itop report`` to rebuild the summary of a run that stopped before writing
one (from its ``config.yaml`` and ``metrics.jsonl``), so the two never drift apart.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .selection import select_best

__all__ = ["MetricsLog", "make_summary", "summary_from_records", "write_summary"]

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (and scalars to TensorBoard) on the main rank.

    Args:
        run_dir: The run folder.
        enabled: False on the other ranks of a process group (they write nothing).
        tensorboard: Also write TensorBoard events under ``run_dir/tb`` (when installed).
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb_dir = Path(run_dir) / "tb"
        self._tb: Any = None if (tensorboard and enabled) else False

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def offset(self) -> int:
        """The file's size: where a resume from the current position truncates it."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        """Drop what was written after ``offset`` (records of steps a resume redoes)."""
        if self.enabled and self.path.exists():
            with self.path.open("r+") as f:
                f.truncate(offset)

    def scalars(self, record: Mapping[str, Any], step: int) -> None:
        """Numeric values of ``record`` as TensorBoard scalars at ``step``."""
        tb = self._tensorboard()
        if tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    tb.add_scalar(k, v, step)
            tb.flush()

    def close(self) -> None:
        if self._tb:
            self._tb.close()
            self._tb = None

    def _tensorboard(self) -> Any:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self._tb_dir))
        return self._tb


def make_summary(
    *,
    run: str,
    config: Mapping[str, Any],
    epochs: int | None,
    steps: int,
    completed: bool,
    best: Mapping[str, Any] | None,
    last_eval: Mapping[str, Any] | None,
    exploration: Mapping[str, Any],
    update_interval: int | None,
    flops: Mapping[str, Any] | None,
    wall_time_s: float | None,
    run_dir: str,
    task: str | None = None,
) -> dict[str, Any]:
    """The content of ``summary.json``, in its documented key order.

    Args:
        run: The run's name.
        config: The resolved config (method presets applied; ``sparsity`` is the target).
        epochs: Epochs the run trains (``None`` when unknown).
        steps: Optimizer steps done.
        completed: Whether the run trained to the end.
        best: The selected epoch (:func:`itop.training.selection.selection`), if any.
        last_eval: The last evaluated epoch record, if any.
        exploration: ``sparsity``, ``itop_rate``, ``reliable_itop_rate``, ``updates`` and, when
            known, ``parameters`` (the model's parameters, counting only active weights of the
            sparsified layers), ``lifetime`` (statistics) and ``lifetime_histogram`` (steps ->
            weights).
        update_interval: ΔT (``None``: no topology updates).
        flops: :func:`itop.flops.summarize` of the run (``None`` when unknown).
        wall_time_s: Seconds of training.
        run_dir: The run folder.
        task: The run's task (:mod:`~itop.training.tasks`; ``None``: unknown); its metrics
            derived from the test loss follow the accuracies (a language model:
            ``final_test_perplexity``, ``test_perplexity_selected``, ``..._bits_per_token``).
    """
    from .tasks import TASKS

    best = best or {}
    last_eval = last_eval or {}
    out: dict[str, Any] = {
        "run": run,
        "method": config.get("method"), "model": config.get("model"), "dataset": config.get("dataset"),
        "target_sparsity": config.get("sparsity"), "seed": config.get("seed"),
        "execution": config.get("execution"),
        "epochs": epochs, "steps": steps, "completed": completed,
        "selected_epoch": best.get("epoch"),
        "best_val_acc": _val_acc(best),
        "test_acc_selected": best.get("test_acc"),
        "final_val_acc": last_eval.get("val_acc"),
        "final_test_acc": last_eval.get("test_acc"),
        "task": task,
        "test_loss_selected": best.get("test_loss"),
        "final_test_loss": last_eval.get("test_loss"),
        "sparsity": exploration.get("sparsity"),
        "itop_rate": exploration.get("itop_rate"),
        "reliable_itop_rate": exploration.get("reliable_itop_rate"),
        "updates": exploration.get("updates"),
        "parameters": exploration.get("parameters"),
        "lifetime": exploration.get("lifetime"),
        # lifetime in steps -> number of pruned weights that lived that long
        "lifetime_histogram": exploration.get("lifetime_histogram"),
        "update_interval": update_interval,
        "batch_size": config.get("batch_size"), "multiplier": config.get("multiplier"),
    }
    if task is not None:  # the task's derived metrics, after the test loss
        derive = TASKS.lookup(task)().derived
        extra: dict[str, Any] = {}
        for which, loss in (("selected", best.get("test_loss")), ("final", last_eval.get("test_loss"))):
            for k, v in (derive(loss) if loss is not None else {}).items():
                extra[f"test_{k}_selected" if which == "selected" else f"final_test_{k}"] = v
        keys = list(out)
        at = keys.index("final_test_loss") + 1
        out = {**{k: out[k] for k in keys[:at]}, **extra, **{k: out[k] for k in keys[at:]}}
    out.update(flops or {})
    out["wall_time_s"] = wall_time_s
    out["run_dir"] = run_dir
    return out


def summary_from_records(folder: Path, config: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]],
                         updates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of a run that stopped before writing one, from its records (incomplete)."""
    from .config import meaning, total_epochs

    evaluated = [e for e in epochs if "test_acc" in e]
    last = epochs[-1] if epochs else {}
    steps = max([int(r.get("step", 0)) for r in [*epochs, *updates]] or [0])
    seconds = [e.get("seconds") for e in epochs]
    wall = sum(s for s in seconds if isinstance(s, (int, float)) and s == s and abs(s) != float("inf"))
    return make_summary(
        run=str(config.get("name") or folder.name), config=config,
        epochs=total_epochs(config["epochs"], config.get("multiplier", 1.0)) if config.get("epochs") else None,
        steps=steps, completed=False,
        best=select_best(evaluated), last_eval=evaluated[-1] if evaluated else None,
        exploration={
            "sparsity": last.get("sparsity"),
            "itop_rate": last.get("itop_rate", updates[-1]["itop_rate"] if updates else None),
            "reliable_itop_rate": last.get("reliable_itop_rate"),
            "updates": last.get("updates", len(updates)),
        },
        update_interval=meaning("update_interval", config.get("update_interval")),
        flops=None, wall_time_s=wall or None, run_dir=str(folder),
        task=next((e["task"] for e in reversed(epochs) if "task" in e), None),
    )


def _val_acc(best: Mapping[str, Any]) -> float | None:
    """The selected epoch's validation accuracy (``None`` without a validation set)."""
    val = best.get("val_acc")
    return val if val is not None and val != float("-inf") else None


def reselect(summary: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``summary`` with its selected epoch chosen again from the run's epoch records by the
    current rule (:mod:`~itop.training.selection`), or ``None`` when the selection stands.

    Runs written by itop before selection waited for the final sparsity could report a
    gradually pruned network at an epoch when it was still denser than its target; this puts
    the summary right (the run's ``best.pt`` still holds the epoch it selected then).
    """
    evaluated = [e for e in epochs if "test_acc" in e]
    best = select_best(evaluated)
    if best is None or best.get("epoch") == summary.get("selected_epoch"):
        return None
    from .tasks import TASKS

    out = dict(summary)
    out.update({"selected_epoch": best.get("epoch"), "best_val_acc": _val_acc(best),
                "test_acc_selected": best.get("test_acc"), "test_loss_selected": best.get("test_loss")})
    task = summary.get("task")
    if task is not None and best.get("test_loss") is not None and task in TASKS.names():
        for k, v in TASKS.lookup(task)().derived(best["test_loss"]).items():
            out[f"test_{k}_selected"] = v
    return out


def write_summary(summary: Mapping[str, Any], path: Path) -> None:
    """Write ``summary.json`` atomically (a crash never leaves half a summary)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)
