"""Aggregating runs: groups of runs that differ only by seed, mean ± std of their metrics.

The second step of a report (read -> aggregate -> plot -> render), plus the labels and number
formats the plots and tables share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import unknown_name
from .read import Run, _finite, _num

__all__ = ["GROUP_KEYS", "METRICS", "Group", "Stat", "aggregate", "varying_keys"]

# Config keys that tell groups apart (runs that agree on all of them differ only by seed). The
# last ones are settings a study varies beside the method to measure one choice (sparse-aware
# init, execution mode, the fidelity ablations, the hold-out, model options).
GROUP_KEYS = ("method", "model", "dataset", "target_sparsity", "update_interval", "batch_size",
              "multiplier", "execution", "sparse_init", "keep_regrown", "drop_rounding",
              "val_fraction", "model_args", "epochs")
# Summary values averaged over the runs of a group.
METRICS = ("test_acc_selected", "final_test_acc", "itop_rate", "reliable_itop_rate", "sparsity",
           "training_flops_relative", "inference_flops_relative", "wall_time_s", "parameters")

# Short names for labels and table headers.
KEY_LABELS = {"method": "method", "model": "model", "dataset": "dataset", "target_sparsity": "sparsity",
              "update_interval": "ΔT", "batch_size": "batch", "multiplier": "multiplier", "seed": "seed",
              "val_fraction": "val", "model_args": "model args"}
METRIC_LABELS = {
    "test_acc_selected": "test acc, selected (%)",
    "final_test_acc": "test acc, final (%)",
    "itop_rate": "R_s",
    "reliable_itop_rate": "reliable R_s",
    "sparsity": "actual sparsity",
    "training_flops_relative": "train FLOPs (x dense)",
    "inference_flops_relative": "inference FLOPs (x dense)",
    "wall_time_s": "wall time (s)",
    "parameters": "parameters",
}
# Table headers of the key columns, where they differ from KEY_LABELS.
_TABLE_KEY_LABELS = {**KEY_LABELS, "target_sparsity": "target sparsity"}
# Per metric: factor applied for display and the number of decimals.
_DISPLAY = {"test_acc_selected": (100.0, 2), "final_test_acc": (100.0, 2), "itop_rate": (1.0, 4),
            "reliable_itop_rate": (1.0, 4), "sparsity": (1.0, 4), "training_flops_relative": (1.0, 3),
            "inference_flops_relative": (1.0, 3), "wall_time_s": (1.0, 1),
            "parameters": (1.0, 0)}
_MISSING = "–"


class Stat(NamedTuple):
    """Mean and sample standard deviation (ddof 1; NaN for fewer than 2) over ``n`` values."""

    mean: float
    std: float
    n: int


def _stat(values: Iterable[Any]) -> Stat:
    xs = [_num(v) for v in values]
    xs = [x for x in xs if math.isfinite(x)]
    n = len(xs)
    if n == 0:
        return Stat(float("nan"), float("nan"), 0)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return Stat(mean, std, n)


@dataclass
class Group:
    """Runs that agree on the grouping keys (typically the seeds of one setting).

    Attributes:
        key: The grouping key values, e.g. ``{"method": "rigl", "update_interval": 100}``.
        runs: The runs of the group, by seed.
        stats: Per metric of :data:`METRICS`, the :class:`Stat` over the runs.
    """

    key: dict[str, Any]
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def n(self) -> int:
        """Number of runs."""
        return len(self.runs)

    @property
    def incomplete(self) -> int:
        """Number of runs that did not finish."""
        return sum(not r.completed for r in self.runs)

    @property
    def label(self) -> str:
        """A short label such as ``rigl, ΔT=100``."""
        return _label(self.key)

    def get(self, key: str) -> Any:
        """A grouping value, else the value the runs share (``None`` if they differ)."""
        if key in self.key:
            return self.key[key]
        values = {_hashable(r.get(key)) for r in self.runs}
        return self.runs[0].get(key) if len(values) == 1 else None


def _clean(v: Any) -> Any:
    """``v``, with NaN as ``None`` (NaN is no usable dictionary key)."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (list, dict)) else _clean(v)


def _fmt_value(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _label(key: dict[str, Any], empty: str = "all runs") -> str:
    parts = []
    for k, v in key.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue  # e.g. no ΔT for dense and IMP runs
        if k == "method":
            parts.append(str(v))
        elif k == "multiplier":
            parts.append(f"{_fmt_value(k, v)}x")
        elif k in ("model", "dataset"):
            parts.append(str(v))
        else:
            parts.append(f"{KEY_LABELS.get(k, k)}={_fmt_value(k, v)}")
    return ", ".join(parts) if parts else empty


def varying_keys(runs: Sequence[Run], keys: Sequence[str] = GROUP_KEYS) -> list[str]:
    """The keys of ``keys`` on which the runs do not all agree."""
    return [k for k in keys if len({_hashable(r.get(k)) for r in runs}) > 1]


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _check_by(by: Sequence[str], runs: Sequence[Run]) -> list[str]:
    known = set(GROUP_KEYS) | {"seed"}
    for r in runs:
        known.update(k for k, v in r.summary.items() if not isinstance(v, (dict, list)))
        known.update(k for k, v in r.config.items() if not isinstance(v, (dict, list)))
    out = []
    for k in by:
        if k not in known:
            raise unknown_name("grouping key", k, known)
        if k not in out:
            out.append(k)
    return out


def aggregate(runs: Sequence[Run], by: Sequence[str] | None = None,
              metrics: Sequence[str] = METRICS) -> list[Group]:
    """Group runs and average the metrics over each group's runs (seeds).

    Args:
        runs: Runs from :func:`collect`.
        by: Grouping keys. ``None``: ``method`` plus every other key of :data:`GROUP_KEYS`
            on which the runs differ, so each group holds the seeds of one setting.
        metrics: Summary keys to average (missing, ``None`` and NaN values are left out of a
            stat, whose ``n`` then counts only the values present).

    Returns:
        One :class:`Group` per distinct key, sorted by key values.

    Raises:
        ConfigError: An unknown grouping key.
    """
    if by is None:
        by = ["method"] + [k for k in varying_keys(runs) if k != "method"]
    else:
        by = _check_by(by, runs)
    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        buckets.setdefault(tuple(_hashable(r.get(k)) for k in by), []).append(r)
    groups = []
    for members in buckets.values():
        members = sorted(members, key=lambda r: (_sort_key(r.seed), str(r.path)))
        key = {k: members[0].get(k) for k in by}
        stats = {m: _stat(r.get(m) for r in members) for m in metrics}
        groups.append(Group(key=key, runs=members, stats=stats))
    groups.sort(key=lambda g: tuple(_sort_key(_hashable(g.key[k])) for k in by))
    return groups


def _fmt_stat(metric: str, s: Stat, n_runs: int | None = None) -> str:
    if s.n == 0:
        return _MISSING
    scale, digits = _DISPLAY.get(metric, (1.0, 4))
    text = f"{s.mean * scale:.{digits}f}"
    if s.n > 1:
        text += f" ± {s.std * scale:.{digits}f}"
    if n_runs is not None and s.n != n_runs:
        text += f" (n={s.n})"
    return text


def _fmt_metric(metric: str, value: Any) -> str:
    if not _finite(value):
        return _MISSING
    scale, digits = _DISPLAY.get(metric, (1.0, 4))
    return f"{_num(value) * scale:.{digits}f}"


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return _MISSING
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


