"""Model selection: which evaluated epoch a run reports as its result.

The rule, used by the trainer while it runs and by ``itop report`` for runs that stopped before
writing a summary: the epoch with the highest validation accuracy (the earliest on ties);
without a validation set, the last evaluated epoch. The test set is never used to select.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["is_better", "select_best", "selection"]


def is_better(record: Mapping[str, Any], best: Mapping[str, Any] | None) -> bool:
    """Whether an evaluated epoch record replaces the selection ``best`` so far."""
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
    for record in records:
        if "test_acc" in record and is_better(record, best):
            best = selection(record)
    return best
