"""Model selection: which evaluated epoch a run reports as its result.

The rule, used by the trainer while it runs and by ``itop report`` (which re-applies it to every
run's epoch records): among the epochs evaluated once the network was as sparse as it trains to
(``at_final_sparsity``; every epoch of a fixed-sparsity method, only the epochs after the last
pruning step of gradual pruning), the one with the highest validation accuracy (the earliest on
ties); without a validation set, the last such epoch. The test set is never used to select.

A gradually pruned network (GMP) is denser than its target before its schedule ends, and
usually more accurate: selecting such an epoch would report a 90%-sparse network as the result
of a 99% run. Records written before ``at_final_sparsity`` existed are judged by their
``sparsity`` against the run's last record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["eligible", "is_better", "select_best", "selection"]


def eligible(record: Mapping[str, Any], final_sparsity: float | None = None) -> bool:
    """Whether an epoch may be selected: it was evaluated at the run's final sparsity.

    Args:
        record: An epoch record.
        final_sparsity: For records without ``at_final_sparsity`` (older runs): the sparsity
            the run ended with; ``None`` accepts them.
    """
    flag = record.get("at_final_sparsity")
    if flag is not None:
        return bool(flag)
    sparsity = record.get("sparsity")
    if final_sparsity is None or not isinstance(sparsity, (int, float)):
        return True
    return sparsity >= final_sparsity - 1e-9


def is_better(record: Mapping[str, Any], best: Mapping[str, Any] | None) -> bool:
    """Whether an evaluated epoch record replaces the selection ``best`` so far (``False`` for
    an epoch not yet at the final sparsity)."""
    if not eligible(record):
        return False
    if not best or "val_acc" not in record:
        return True
    best_val = best.get("val_acc")
    return record["val_acc"] > (best_val if best_val is not None else float("-inf"))


def selection(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a run keeps of its selected epoch: epoch, validation and test accuracy, and the test
    loss when recorded (a language model's perplexity derives from it).

    ``val_acc`` is ``-inf`` without a validation set (so any later epoch replaces it).
    """
    kept = {"epoch": record["epoch"], "val_acc": record.get("val_acc", float("-inf")),
            "test_acc": record["test_acc"]}
    if "test_loss" in record:
        kept["test_loss"] = record["test_loss"]
    return kept


def select_best(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The selection over epoch records (those without ``test_acc`` were not evaluated)."""
    best = None
    records = list(records)
    final = next((r["sparsity"] for r in reversed(records)
                  if isinstance(r.get("sparsity"), (int, float))), None)
    for record in records:
        if "test_acc" in record and eligible(record, final) and is_better(record, best):
            best = selection(record)
    return best
