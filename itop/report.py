"""Reports over finished runs: tables of mean ± std over seeds and the paper's figures.

``itop report RUN_DIRS...`` (see :func:`main`) reads the run folders written by ``itop train``
(``summary.json``, ``config.yaml``, ``metrics.jsonl``), groups runs that differ only by seed,
and writes a folder with one Markdown (or self-contained HTML) report plus one PNG per plot::

    report.md / report.html      header, tables, the plots embedded
    groups.csv, runs.csv         the tables as CSV
    accuracy_vs_itop.png         test accuracy vs R_s (the paper's key figure)
    itop_over_steps.png          R_s during training (step function of the updates)
    accuracy_vs_sparsity.png     test accuracy vs sparsity per method
    layers.png                   per-layer density and R_s of one run per method
    lifetimes.png                lifetimes of pruned weights (from the lifetime histograms)
    reliable_itop.png            reliable R_s beside R_s

A plot the runs cannot support (for example accuracy vs sparsity when every run has the same
sparsity) is skipped and the report says why. The library API is :func:`collect`,
:func:`aggregate`, the ``plot_*`` functions and :func:`write_report`.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from .errors import ConfigError, DataNotFoundError, unknown_name

__all__ = [
    "GROUP_KEYS",
    "METRICS",
    "PLOTS",
    "Group",
    "Run",
    "SkipPlot",
    "Stat",
    "aggregate",
    "collect",
    "itop_curve",
    "main",
    "plot_accuracy_vs_itop",
    "plot_accuracy_vs_sparsity",
    "plot_itop_over_steps",
    "plot_layers",
    "plot_lifetimes",
    "plot_reliable_itop",
    "varying_keys",
    "write_report",
]

log = logging.getLogger(__name__)

# Config keys that tell groups apart (runs that agree on all of them differ only by seed).
GROUP_KEYS = ("method", "model", "dataset", "target_sparsity", "update_interval", "batch_size",
              "multiplier")
# Summary values averaged over the runs of a group.
METRICS = ("test_acc_selected", "final_test_acc", "itop_rate", "reliable_itop_rate", "sparsity",
           "training_flops_relative", "inference_flops_relative", "wall_time_s")

# Short names for labels and table headers.
KEY_LABELS = {"method": "method", "model": "model", "dataset": "dataset", "target_sparsity": "sparsity",
              "update_interval": "ΔT", "batch_size": "batch", "multiplier": "multiplier", "seed": "seed"}
METRIC_LABELS = {
    "test_acc_selected": "test acc, selected (%)",
    "final_test_acc": "test acc, final (%)",
    "itop_rate": "R_s",
    "reliable_itop_rate": "reliable R_s",
    "sparsity": "actual sparsity",
    "training_flops_relative": "train FLOPs (x dense)",
    "inference_flops_relative": "inference FLOPs (x dense)",
    "wall_time_s": "wall time (s)",
}
# Table headers of the key columns, where they differ from KEY_LABELS.
_TABLE_KEY_LABELS = {**KEY_LABELS, "target_sparsity": "target sparsity"}
# Per metric: factor applied for display and the number of decimals.
_DISPLAY = {"test_acc_selected": (100.0, 2), "final_test_acc": (100.0, 2), "itop_rate": (1.0, 4),
            "reliable_itop_rate": (1.0, 4), "sparsity": (1.0, 4), "training_flops_relative": (1.0, 3),
            "inference_flops_relative": (1.0, 3), "wall_time_s": (1.0, 1)}
# Summary keys that config.yaml holds under another name. config.yaml is the resolved config
# (method presets applied: dense forces sparsity 0), so for these it is read first.
_CONFIG_NAMES = {"target_sparsity": "sparsity"}
_ROUND_DIR = re.compile(r"^round-(\d+)$")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
_MISSING = "–"


# -- reading runs -------------------------------------------------------------------------------

@dataclass
class Run:
    """One run folder as written by ``itop train``.

    Attributes:
        path: The run folder.
        summary: ``summary.json`` (for a run stopped before the end, one rebuilt from its
            metrics with ``completed`` false).
        config: ``config.yaml`` (the resolved config); empty when missing.
        epochs: The ``"type": "epoch"`` records of ``metrics.jsonl``, in order.
        updates: The ``"type": "update"`` records of ``metrics.jsonl``, in order.
        rounds: For iterative magnitude pruning, the runs of the rounds (round 0 first).
        note: Why the run is flagged, e.g. ``"stopped at step 40 of 210"``; empty when complete.
    """

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[Run] = field(default_factory=list)
    note: str = ""

    @property
    def name(self) -> str:
        """The run name (``summary["run"]``, else the folder name)."""
        return str(self.summary.get("run") or self.path.name)

    @property
    def completed(self) -> bool:
        """Whether the run trained to the end."""
        return self.summary.get("completed") is True

    @property
    def seed(self) -> Any:
        """The run's seed (``None`` when unknown)."""
        return self.get("seed")

    def get(self, key: str, default: Any = None) -> Any:
        """A value of the summary, else of the config.

        Keys the config holds under another name (``target_sparsity`` is ``sparsity`` there)
        come from the config first: the config a run writes is resolved, so it is right even
        for runs whose summary predates that.

        Args:
            key: A summary or config key.
            default: Returned when neither has the key.
        """
        renamed = _CONFIG_NAMES.get(key)
        if renamed is not None and self.config.get(renamed) is not None:
            return self.config[renamed]
        if key in self.summary:
            return self.summary[key]
        if key in self.config:
            return self.config[key]
        return default

    def metric(self, key: str) -> float:
        """A numeric summary value as a float; NaN when missing, ``None`` or not a number."""
        return _num(self.get(key))


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _finite(value: Any) -> bool:
    return not math.isnan(_num(value)) and not math.isinf(_num(value))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("skipping %s: cannot read it (%s)", path, e)
        return None
    if not isinstance(data, dict):
        log.warning("skipping %s: not a JSON object", path)
        return None
    return data


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        log.warning("ignoring %s: cannot read it (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _read_metrics(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    epochs: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return epochs, updates
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        log.warning("ignoring %s: %s", path, e)
        return epochs, updates
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # e.g. the last line of a run killed while writing it
            log.warning("%s line %d is not JSON; ignored", path, i + 1)
            continue
        if isinstance(rec, dict) and rec.get("type") == "epoch":
            epochs.append(rec)
        elif isinstance(rec, dict) and rec.get("type") == "update":
            updates.append(rec)
    return epochs, updates


def _summary_from_metrics(folder: Path, config: dict[str, Any], epochs: list[dict[str, Any]],
                          updates: list[dict[str, Any]]) -> dict[str, Any]:
    """A summary for a run that stopped before writing one (flagged incomplete)."""
    evaluated = [e for e in epochs if "test_acc" in e]
    best = None
    for e in evaluated:
        if best is None or _num(e.get("val_acc")) > _num(best.get("val_acc")) or "val_acc" not in e:
            best = e
    last_eval = evaluated[-1] if evaluated else {}
    last = epochs[-1] if epochs else {}
    steps = max([int(r.get("step", 0)) for r in epochs + updates] or [0])
    return {
        "run": config.get("name") or folder.name,
        "method": config.get("method"), "model": config.get("model"), "dataset": config.get("dataset"),
        "target_sparsity": config.get("sparsity"), "seed": config.get("seed"),
        "steps": steps, "completed": False,
        "selected_epoch": best.get("epoch") if best else None,
        "best_val_acc": best.get("val_acc") if best else None,
        "test_acc_selected": best.get("test_acc") if best else None,
        "final_val_acc": last_eval.get("val_acc"), "final_test_acc": last_eval.get("test_acc"),
        "sparsity": last.get("sparsity"),
        "itop_rate": last.get("itop_rate", updates[-1]["itop_rate"] if updates else None),
        "reliable_itop_rate": last.get("reliable_itop_rate"), "updates": last.get("updates", len(updates)),
        "update_interval": config.get("update_interval"), "batch_size": config.get("batch_size"),
        "multiplier": config.get("multiplier"),
        "wall_time_s": sum(_num(e.get("seconds")) for e in epochs if _finite(e.get("seconds"))) or None,
        "run_dir": str(folder),
    }


def _load_run(folder: Path) -> Run | None:
    """Read one run folder; ``None`` when it holds neither a summary nor metrics."""
    config = _read_config(folder)
    epochs, updates = _read_metrics(folder)
    summary = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else None
    note = ""
    if summary is None:
        if not epochs and not updates:
            return None
        summary = _summary_from_metrics(folder, config, epochs, updates)
        note = f"no summary.json (stopped at step {summary['steps']}); values from metrics.jsonl"
    run = Run(path=folder, summary=summary, config=config, epochs=epochs, updates=updates)
    if not run.completed and not note:
        epochs_total = summary.get("epochs")
        note = f"stopped at step {summary.get('steps')}" + (
            f" ({len(epochs)} of {epochs_total} epochs finished)" if epochs_total else "")
    run.note = note
    return run


def _round_dirs(folder: Path) -> list[Path]:
    found = []
    for child in folder.iterdir() if folder.is_dir() else []:
        m = _ROUND_DIR.match(child.name)
        has_run = (child / "summary.json").is_file() or (child / "metrics.jsonl").is_file()
        if m and child.is_dir() and has_run:
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def _load_imp(folder: Path, rounds: list[Path]) -> Run | None:
    """An iterative-magnitude-pruning folder: the top summary plus its round runs."""
    round_runs = [r for r in (_load_run(p) for p in rounds) if r is not None]
    top = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else None
    if top is None:
        if not round_runs:
            return None
        # Stopped between rounds: report the last round reached, flagged.
        last = round_runs[-1]
        config = _read_config(folder) or dict(last.config)
        summary = dict(last.summary)
        summary.update({"run": folder.name, "completed": False, "run_dir": str(folder),
                        "target_sparsity": config.get("sparsity", summary.get("target_sparsity")),
                        "wall_time_s": sum(_num(r.get("wall_time_s")) for r in round_runs
                                           if _finite(r.get("wall_time_s")))})
        note = f"IMP stopped in round {len(round_runs) - 1}"
        return Run(path=folder, summary=summary, config=config, epochs=last.epochs, rounds=round_runs,
                   note=note)
    last = round_runs[-1] if round_runs else None
    run = Run(path=folder, summary=top, config=_read_config(folder) or (last.config if last else {}),
              epochs=last.epochs if last else [], rounds=round_runs)
    if not run.completed:
        run.note = f"stopped at step {top.get('steps')}"
    return run


def collect(paths: Iterable[str | os.PathLike], include_rounds: bool = False) -> list[Run]:
    """Find and read the runs under ``paths``.

    A path may be a run folder, a ``summary.json`` file, or any folder above run folders (it is
    searched recursively for ``summary.json``, and for ``metrics.jsonl`` of runs stopped before
    writing a summary). An iterative-magnitude-pruning folder counts as one run; its
    ``round-K`` folders are read into :attr:`Run.rounds` and listed as runs of their own only
    with ``include_rounds``. Runs that did not finish are included with ``completed`` false and
    a :attr:`Run.note`.

    Args:
        paths: Run folders, parent folders or ``summary.json`` files.
        include_rounds: Also return the round runs of IMP folders.

    Returns:
        The runs, each once, sorted by path.

    Raises:
        DataNotFoundError: A path does not exist, or no run was found under any of them.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataNotFoundError("no run folders given; pass the folders written by itop train (e.g. runs/)")
    folders: set[Path] = set()
    explicit: set[Path] = set()  # folders named directly (a round-K folder then is one run)
    for p in paths:
        if not p.exists():
            raise DataNotFoundError(f"{p} does not exist; pass run folders written by itop train")
        if p.is_file():
            if p.name in ("summary.json", "metrics.jsonl"):
                folders.add(p.parent)
                explicit.add(p.parent.resolve())
            continue
        explicit.add(p.resolve())
        folders.update(f.parent for f in p.rglob("summary.json"))
        folders.update(f.parent for f in p.rglob("metrics.jsonl"))
    folders = {f.resolve() for f in folders}
    # IMP folders: the parents of round-K folders.
    imp_roots = {f.parent for f in folders if _ROUND_DIR.match(f.name) and f not in explicit}
    runs: dict[Path, Run] = {}
    for folder in sorted(folders | imp_roots):
        if folder in runs:
            continue
        if folder in imp_roots:
            run = _load_imp(folder, _round_dirs(folder))
            if run is not None:
                runs[folder] = run
                if include_rounds:
                    for r in run.rounds:
                        runs[r.path] = r
            continue
        if _ROUND_DIR.match(folder.name) and folder.parent in imp_roots and folder not in explicit:
            continue  # read with its IMP folder
        run = _load_run(folder)
        if run is not None:
            runs[folder] = run
    if not runs:
        where = ", ".join(str(p) for p in paths)
        raise DataNotFoundError(f"no runs found in {where}; pass folders written by itop train "
                                "(each holds summary.json and metrics.jsonl)")
    out = [runs[k] for k in sorted(runs)]
    incomplete = sum(not r.completed for r in out)
    log.info("found %d runs (%d incomplete)", len(out), incomplete)
    return out


# -- aggregation ---------------------------------------------------------------------------------

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


# -- plots ---------------------------------------------------------------------------------------

class SkipPlot(Exception):
    """Raised by a ``plot_*`` function when the runs cannot support the plot (message: why)."""


def _figure(width: float = 7.5, height: float = 5.0):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SkipPlot("matplotlib is not installed (pip install matplotlib)") from None
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    log.info("wrote %s", path)
    return path


def _method_colors(runs: Sequence[Run]) -> dict[str, Any]:
    """One colour per method, the same in every plot of a report (from all its runs)."""
    from matplotlib import colormaps

    names = sorted({str(r.get("method")) for r in runs})
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(names)}


def _group_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _outside_legend(fig, ax) -> None:
    """A legend below the axes; two columns when there are many short entries.

    The figure grows taller with the legend, so the axes keep about 3.5 inches of height
    however many groups there are.
    """
    handles, labels = ax.get_legend_handles_labels()
    ncols = 2 if len(labels) > 3 and max(len(t) for t in labels) <= 40 else 1
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=ncols)
    rows = math.ceil(len(labels) / ncols)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, max(height, 3.5 + 0.6 + 0.17 * rows))


def _err(s: Stat, scale: float = 1.0) -> float:
    return s.std * scale if math.isfinite(s.std) else 0.0


def _acc_metric(groups: Sequence[Group]) -> str:
    if any(g.stats.get("test_acc_selected", Stat(0, 0, 0)).n for g in groups):
        return "test_acc_selected"
    return "final_test_acc"


def _stats_for(groups: Sequence[Group], needed: Sequence[str]) -> list[Group]:
    return [g for g in groups if all(k in g.stats and g.stats[k].n for k in needed)]


def plot_accuracy_vs_itop(runs: Sequence[Run], path: str | os.PathLike,
                          by: Sequence[str] | None = None) -> Path:
    """Test accuracy vs ITOP rate R_s, one point per group with std error bars.

    Colour by method, marker by sparsity; points are annotated with ΔT, batch size and
    multiplier where these vary between groups.

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No group has both a test accuracy and an R_s.
    """
    groups = aggregate(runs, by)
    acc = _acc_metric(groups)
    groups = _stats_for(groups, (acc, "itop_rate"))
    if not groups:
        raise SkipPlot("no run has both a test accuracy and an ITOP rate")
    fig = _figure()
    ax = fig.add_subplot()
    colors = _method_colors(runs)
    used = {str(g.get("method")) for g in groups}
    sparsities = sorted({_clean(g.get("target_sparsity")) for g in groups}, key=_sort_key)
    markers = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(sparsities)}
    annotate = [k for k in ("update_interval", "batch_size", "multiplier")
                if len({_hashable(g.get(k)) for g in groups}) > 1]
    offsets = ((6, 6), (6, -14), (-10, 10), (-10, -16))
    for i, g in enumerate(groups):
        x, y = g.stats["itop_rate"], g.stats[acc]
        ax.errorbar(x.mean, y.mean * 100, xerr=_err(x), yerr=_err(y, 100),
                    fmt=markers[_clean(g.get("target_sparsity"))], color=colors[str(g.get("method"))],
                    markersize=8, capsize=3, elinewidth=1, markeredgecolor="black", markeredgewidth=0.5)
        text = _label({k: g.get(k) for k in annotate}, empty="")
        if text:
            ax.annotate(text, (x.mean, y.mean * 100), textcoords="offset points",
                        xytext=offsets[i % len(offsets)], fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="", markersize=8, label=m)
               for m, c in colors.items() if m in used]
    handles += [Line2D([], [], color="grey", marker=markers[s], linestyle="", markersize=8,
                       label=f"sparsity {_fmt_value('target_sparsity', s)}") for s in sparsities]
    ax.legend(handles=handles, fontsize=8, loc="best", title="colour: method, marker: sparsity",
              title_fontsize=8)
    ax.set_xlabel("ITOP rate R_s (fraction of weights ever active)")
    which = " of the model selected by val. acc." if acc == "test_acc_selected" else ", last epoch"
    ax.set_ylabel(f"test accuracy (%){which}")
    ax.set_title("Test accuracy vs in-time over-parameterization (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    return _save(fig, Path(path))


def itop_curve(run: Run) -> tuple[list[int], list[float]] | None:
    """R_s of a run as a step function of the training step.

    Built from the update records (R_s after each topology update) and the epoch records;
    the value at step 0 comes from an epoch record before the first update, else it is
    reconstructed from ``newly_explored`` (R_s rises by ``newly_explored / N`` at each update),
    else, when every update regrew as many weights as it dropped, it is the run's density.

    Args:
        run: A run with metrics.

    Returns:
        ``(steps, values)``, increasing steps; ``None`` when the run has no update records.
    """
    ups = sorted((u for u in run.updates if _finite(u.get("itop_rate")) and _finite(u.get("step"))),
                 key=lambda u: u["step"])
    if not ups:
        return None
    first = ups[0]["step"]
    eps = sorted((int(e["step"]), float(e["itop_rate"])) for e in run.epochs
                  if _finite(e.get("step")) and _finite(e.get("itop_rate")))
    before = [v for s, v in eps if s < first]
    start = before[-1] if before else _initial_itop(ups)
    if start is None and all(_num(u.get("dropped")) == _num(u.get("grown")) for u in ups):
        # Drop-and-grow at constant density: R_s starts at the density the run keeps.
        density = 1.0 - run.metric("sparsity")
        start = density if 0.0 <= density <= 1.0 else None
    points: dict[int, float] = {}
    if start is not None:
        points[0] = start
    for s, v in eps:
        if s >= first:
            points[s] = v
    for u in ups:
        points[int(u["step"])] = float(u["itop_rate"])
    steps = sorted(points)
    values = [points[s] for s in steps]
    end = run.summary.get("steps")
    if _finite(end) and int(end) > steps[-1]:
        steps.append(int(end))
        values.append(values[-1])
    return steps, values


def _initial_itop(ups: list[dict[str, Any]]) -> float | None:
    """R_s before the first update, from R_s increments and ``newly_explored`` counts."""
    best = None
    for prev, cur in zip(ups, ups[1:], strict=False):
        d = _num(cur["itop_rate"]) - _num(prev["itop_rate"])
        newly = _num(cur.get("newly_explored"))
        if d > 0 and newly > 0 and (best is None or newly > best[0]):
            best = (newly, newly / d)
    newly0 = _num(ups[0].get("newly_explored"))
    if newly0 == 0:
        return float(ups[0]["itop_rate"])
    if best is None or not math.isfinite(newly0):
        return None
    total = round(best[1])
    return min(max(float(ups[0]["itop_rate"]) - newly0 / total, 0.0), 1.0)


def _value_at(steps: list[int], values: list[float], s: int) -> float | None:
    lo, hi = 0, len(steps)
    while lo < hi:
        mid = (lo + hi) // 2
        if steps[mid] <= s:
            lo = mid + 1
        else:
            hi = mid
    return values[lo - 1] if lo > 0 else None


def _mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    grid = sorted({s for steps, _ in curves for s in steps})
    out_s, out_v = [], []
    for s in grid:
        vals = [v for v in (_value_at(st, vs, s) for st, vs in curves) if v is not None]
        if vals:
            out_s.append(s)
            out_v.append(sum(vals) / len(vals))
    return out_s, out_v


def plot_itop_over_steps(runs: Sequence[Run], path: str | os.PathLike,
                         by: Sequence[str] | None = None) -> Path:
    """R_s over training steps, one step-function line per group (mean over its seeds).

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run recorded a topology update.
    """
    lines = []
    for g in aggregate(runs, by):
        curves = [c for c in (itop_curve(r) for r in g.runs) if c is not None]
        if curves:
            lines.append((g, len(curves), _mean_curve(curves)))
    if not lines:
        raise SkipPlot("no run recorded a topology update (static masks or no metrics.jsonl)")
    fig = _figure()
    ax = fig.add_subplot()
    styles = ("-", "--", "-.", ":")
    # Colour per group, line style per method, so identical curves of two methods stay visible.
    methods = sorted({str(g.get("method")) for g, _, _ in lines})
    for (g, n, (steps, values)), color in zip(lines, _group_colors(len(lines)), strict=True):
        label = f"{g.label} (n={n})" if n > 1 else g.label
        k = methods.index(str(g.get("method"))) % len(styles)
        ax.step(steps, values, where="post", color=color, linestyle=styles[k],
                linewidth=2.4 if k == 0 else 1.8, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("ITOP rate R_s")
    ax.set_title("R_s during training" + (" (mean over seeds)" if any(n > 1 for _, n, _ in lines) else ""))
    ax.grid(True, alpha=0.3)
    _outside_legend(fig, ax)
    return _save(fig, Path(path))


def plot_accuracy_vs_sparsity(runs: Sequence[Run], path: str | os.PathLike,
                              by: Sequence[str] | None = None) -> Path:
    """Test accuracy vs sparsity, one line per method (and per other varying setting).

    Dense runs are drawn as a horizontal reference line.

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`); ``target_sparsity`` is always one of them.

    Returns:
        ``path``.

    Raises:
        SkipPlot: Fewer than two sparsities among the sparse runs.
    """
    if by is not None and "target_sparsity" not in by:
        by = list(by) + ["target_sparsity"]
    groups = aggregate(runs, by)
    acc = _acc_metric(groups)
    groups = _stats_for(groups, (acc,))
    dense = [g for g in groups if g.get("method") == "dense"]
    sparse = [g for g in groups if g.get("method") != "dense" and _finite(g.get("target_sparsity"))]
    levels = sorted({_num(g.get("target_sparsity")) for g in sparse})
    if len(levels) < 2:
        only = f" ({_fmt_value('target_sparsity', levels[0])})" if levels else ""
        raise SkipPlot(f"all sparse runs have the same sparsity{only}; train at several --sparsity values")
    lines: dict[tuple, list[Group]] = {}
    for g in sparse:
        rest = tuple((k, _hashable(v)) for k, v in g.key.items() if k != "target_sparsity")
        lines.setdefault(rest, []).append(g)
    fig = _figure()
    ax = fig.add_subplot()
    colors = _method_colors(runs)
    method_lines: dict[str, int] = {}
    styles = ("-", "--", "-.", ":")
    for members in lines.values():
        members.sort(key=lambda g: _num(g.get("target_sparsity")))
        method = str(members[0].get("method"))
        k = method_lines[method] = method_lines.get(method, -1) + 1
        xs = [_num(g.get("target_sparsity")) for g in members]
        ys = [g.stats[acc].mean * 100 for g in members]
        es = [_err(g.stats[acc], 100) for g in members]
        label = _label({kk: v for kk, v in members[0].key.items() if kk != "target_sparsity"})
        ax.errorbar(xs, ys, yerr=es, color=colors[method], marker=_MARKERS[k % len(_MARKERS)],
                    linestyle=styles[k % len(styles)], capsize=3, markersize=6, label=label)
    for i, g in enumerate(dense):
        s = g.stats[acc]
        label = _label({k: v for k, v in g.key.items() if k != "target_sparsity"})
        ax.axhline(s.mean * 100, color="black", linestyle=(0, (4, 2 + i)), linewidth=1.2,
                   label=f"{label} (reference)")
        if s.n > 1 and math.isfinite(s.std):
            ax.axhspan((s.mean - s.std) * 100, (s.mean + s.std) * 100, color="black", alpha=0.08)
    ax.set_xticks(levels)
    ax.set_xticklabels([_fmt_value("target_sparsity", v) for v in levels])
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy vs sparsity (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    _outside_legend(fig, ax)
    return _save(fig, Path(path))


def _representatives(runs: Sequence[Run]) -> list[Run]:
    """One run per method with per-layer records: completed first, then lowest seed."""
    with_layers = [r for r in runs if _last_layers(r)]
    if not with_layers:
        return []
    models: dict[Any, int] = {}
    for r in with_layers:
        models[r.get("model")] = models.get(r.get("model"), 0) + 1
    model = max(models, key=lambda m: models[m])
    chosen: dict[str, Run] = {}

    def preference(r: Run) -> tuple:  # completed, lowest seed, highest sparsity
        sparsity = r.metric("target_sparsity")
        top = -sparsity if math.isfinite(sparsity) else 0.0
        return (not r.completed, _sort_key(r.seed), top, str(r.path))

    for r in sorted(with_layers, key=preference):
        if r.get("model") == model:
            chosen.setdefault(str(r.get("method")), r)
    return [chosen[m] for m in sorted(chosen)]


def _last_layers(run: Run) -> dict[str, Any] | None:
    """The per-layer stats of the run's last epoch record that has them."""
    for e in reversed(run.epochs):
        if isinstance(e.get("layers"), dict) and e["layers"]:
            return e["layers"]
    return None


def _short_layer(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def plot_layers(runs: Sequence[Run], path: str | os.PathLike, by: Sequence[str] | None = None) -> Path:
    """Per-layer density and per-layer R_s at the last epoch, one representative run per method.

    The representative is the first completed run of the method with the lowest seed (for
    the most common model when models differ).

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Unused (for a uniform signature).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run has per-layer records.
    """
    reps = _representatives(runs)
    if not reps:
        raise SkipPlot("no run has per-layer records (epoch lines of metrics.jsonl)")
    last_layers = []
    names: list[str] = []
    for r in reps:
        layers = _last_layers(r)
        last_layers.append(layers)
        names.extend(n for n in layers if n not in names)
    n_bars = len(reps)
    width = min(max(7.5, 0.28 * len(names) * n_bars + 2.5), 28.0)
    fig = _figure(width, 7.0)
    axes = fig.subplots(2, 1, sharex=True)
    colors = _method_colors(runs)
    bar = 0.8 / n_bars
    for ax, key, ylabel in ((axes[0], "density", "density (fraction active)"),
                            (axes[1], "itop_rate", "layer R_s")):
        for i, (r, layers) in enumerate(zip(reps, last_layers, strict=True)):
            xs = [j + (i - (n_bars - 1) / 2) * bar for j in range(len(names))]
            ys = [_num(layers.get(n, {}).get(key)) for n in names]
            sparsity = _fmt_value("target_sparsity", r.get("target_sparsity"))
            label = f"{r.get('method')} ({r.name}, s={sparsity})"
            ax.bar(xs, [y if math.isfinite(y) else 0.0 for y in ys], width=bar,
                   color=colors[str(r.get("method"))],
                   edgecolor="black", linewidth=0.4, label=label)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.05)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title(f"Per-layer density and R_s at the last epoch ({reps[0].get('model')})")
    axes[0].legend(fontsize=8, loc="best")
    axes[1].set_xticks(range(len(names)))
    rotate = len(names) > 5 or max(len(_short_layer(n)) for n in names) > 12
    axes[1].set_xticklabels([_short_layer(n) for n in names], rotation=45 if rotate else 0,
                            ha="right" if rotate else "center", fontsize=8)
    axes[1].set_xlabel("layer")
    return _save(fig, Path(path))


def plot_lifetimes(runs: Sequence[Run], path: str | os.PathLike,
                   by: Sequence[str] | None = None) -> Path:
    """Lifetimes of pruned (regrown then pruned) weights, one histogram per group (ΔT).

    Sums the runs' ``lifetime_histogram`` (lifetime in steps -> count) over each group and
    shows the fraction of the group's pruned weights per lifetime.

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run pruned any weight.
    """
    hists = []
    for g in aggregate(runs, by):
        total: dict[float, float] = {}
        unreliable = pruned = 0.0
        for r in g.runs:
            h = r.summary.get("lifetime_histogram")
            if not isinstance(h, dict):
                continue
            for k, c in h.items():
                if _finite(c) and c > 0:
                    try:
                        life = float(k)
                    except ValueError:
                        continue
                    total[life] = total.get(life, 0.0) + float(c)
            lt = r.summary.get("lifetime") or {}
            if _finite(lt.get("pruned")) and _finite(lt.get("fraction_unreliable")):
                pruned += lt["pruned"]
                unreliable += lt["pruned"] * lt["fraction_unreliable"]
        if total:
            hists.append((g, total, unreliable / pruned if pruned else float("nan")))
    if not hists:
        raise SkipPlot("no weight was pruned and regrown (empty lifetime histograms)")
    fig = _figure()
    ax = fig.add_subplot()
    colors = _group_colors(len(hists))
    values = sorted({v for _, h, _ in hists for v in h})
    for i, ((g, h, unrel), color) in enumerate(zip(hists, colors, strict=True)):
        n = sum(h.values())
        label = f"{g.label} ({int(n)} pruned"
        label += f", {unrel:.0%} unreliable)" if math.isfinite(unrel) and unrel > 0 else ")"
        if len(values) <= 24:  # few distinct lifetimes (multiples of ΔT): bars per value
            bar = 0.8 / len(hists)
            xs = [j + (i - (len(hists) - 1) / 2) * bar for j in range(len(values))]
            ax.bar(xs, [h.get(v, 0.0) / n for v in values], width=bar, color=color, label=label,
                   edgecolor="black", linewidth=0.3)
        else:
            import numpy as np

            lo, hi = max(values[0], 1.0), max(values[-1], 1.0)
            log_x = hi / lo > 30
            if log_x:
                edges = np.geomspace(lo, hi * 1.001, 31)
            else:
                edges = np.linspace(values[0], values[-1] * 1.001 + 1, 31)
            data = [max(v, lo) if log_x else v for v in h]
            ax.hist(data, bins=edges, weights=[c / n for c in h.values()], histtype="step",
                    linewidth=1.8, color=color, label=label)
            if log_x:
                ax.set_xscale("log")
    if len(values) <= 24:
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([f"{v:g}" for v in values], rotation=45 if len(values) > 10 else 0, fontsize=8)
    ax.set_xlabel("lifetime of a pruned weight (steps from growth to pruning)")
    ax.set_ylabel("fraction of pruned weights")
    ax.set_title("Lifetimes of regrown weights before they were pruned")
    ax.grid(True, axis="y", alpha=0.3)
    _outside_legend(fig, ax)
    return _save(fig, Path(path))


def plot_reliable_itop(runs: Sequence[Run], path: str | os.PathLike,
                       by: Sequence[str] | None = None) -> Path:
    """R_s and reliable R_s side by side per group (bars with std error bars).

    Args:
        runs: Runs from :func:`collect`.
        path: PNG file to write.
        by: Grouping keys (see :func:`aggregate`).

    Returns:
        ``path``.

    Raises:
        SkipPlot: No run has an R_s.
    """
    groups = [g for g in aggregate(runs, by) if g.stats["itop_rate"].n or g.stats["reliable_itop_rate"].n]
    if not groups:
        raise SkipPlot("no run has an ITOP rate")
    labels = [g.label for g in groups]
    width = min(max(7.5, 0.9 * len(groups) + 2.5), 28.0)
    fig = _figure(width, 5.0)
    ax = fig.add_subplot()
    for offset, key, label, color, hatch in ((-0.2, "itop_rate", "R_s", "#4C72B0", None),
                                             (0.2, "reliable_itop_rate", "reliable R_s", "#DD8452", "//")):
        stats = [g.stats[key] for g in groups]
        ax.bar([i + offset for i in range(len(groups))],
               [s.mean if s.n else 0.0 for s in stats], width=0.4,
               yerr=[_err(s) for s in stats], capsize=3, color=color, hatch=hatch,
               edgecolor="black", linewidth=0.4, label=label)
    ax.set_xticks(range(len(groups)))
    rotate = len(groups) > 4 or max(len(t) for t in labels) > 18
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylabel("ITOP rate (fraction of weights)")
    ax.set_ylim(0, 1.05)
    ax.set_title("R_s and reliable R_s (weights active long enough to be trained), mean ± std")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return _save(fig, Path(path))


class _PlotSpec(NamedTuple):
    filename: str
    title: str
    caption: str
    fn: Callable[..., Path]


PLOTS: tuple[_PlotSpec, ...] = (
    _PlotSpec("accuracy_vs_itop.png", "Test accuracy vs R_s",
              "One point per group (mean over seeds, bars: std); colour: method, marker: sparsity.",
              plot_accuracy_vs_itop),
    _PlotSpec("itop_over_steps.png", "R_s over training steps",
              "ITOP rate after each topology update (step function), mean over each group's seeds.",
              plot_itop_over_steps),
    _PlotSpec("accuracy_vs_sparsity.png", "Test accuracy vs sparsity",
              "One line per method (and other varying setting); dense runs as a reference line.",
              plot_accuracy_vs_sparsity),
    _PlotSpec("layers.png", "Per-layer density and R_s",
              "Last epoch of one representative run per method.", plot_layers),
    _PlotSpec("lifetimes.png", "Lifetimes of pruned weights",
              "Steps between a weight's (re)growth and its pruning, summed over each group's runs.",
              plot_lifetimes),
    _PlotSpec("reliable_itop.png", "Reliable R_s beside R_s",
              "Reliable R_s counts a weight only once it stayed active for the reliable threshold "
              "(ΔT by default).", plot_reliable_itop),
)


# -- the report document --------------------------------------------------------------------------

# A report is a list of blocks rendered to Markdown or HTML:
# ("h1"|"h2"|"h3"|"p"|"note", text), ("list", [text]), ("table", headers, rows),
# ("img", filename, alt, caption).
Block = tuple


def _group_table(groups: Sequence[Group], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    headers = [_TABLE_KEY_LABELS.get(k, k) for k in keys] + ["n"] + [METRIC_LABELS.get(m, m) for m in METRICS]
    rows = []
    for g in groups:
        n = f"{g.n}" + (f" ({g.incomplete} incomplete)" if g.incomplete else "")
        rows.append([_fmt_value(k, g.key.get(k)) for k in keys] + [n]
                    + [_fmt_stat(m, g.stats[m], g.n) for m in METRICS])
    return headers, rows


_RUN_COLUMNS = ("method", "model", "dataset", "target_sparsity", "update_interval", "batch_size",
                "multiplier", "seed")
_RUN_METRICS = ("test_acc_selected", "final_test_acc", "itop_rate", "reliable_itop_rate", "sparsity",
                "training_flops_relative", "wall_time_s")


def _run_table(runs: Sequence[Run], out_dir: Path) -> tuple[list[str], list[list[str]]]:
    headers = (["run"] + [_TABLE_KEY_LABELS.get(k, k) for k in _RUN_COLUMNS] + ["steps", "completed"]
               + [METRIC_LABELS[m] for m in _RUN_METRICS] + ["folder"])
    rows = []
    for r in runs:
        done = "yes" if r.completed else f"NO: {r.note}" if r.note else "NO"
        rows.append([r.name] + [_fmt_value(k, r.get(k)) for k in _RUN_COLUMNS]
                    + [_fmt_value("steps", r.get("steps")), done]
                    + [_fmt_metric(m, r.get(m)) for m in _RUN_METRICS] + [_rel(r.path, out_dir)])
    return headers, rows


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


def _imp_blocks(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for r in runs:
        rounds = r.summary.get("round_summaries")
        if not isinstance(rounds, list) or not rounds:
            continue
        rows = [[_fmt_value("round", rs.get("round")), _fmt_metric("sparsity", rs.get("sparsity")),
                 _fmt_metric("test_acc_selected", rs.get("test_acc_selected")),
                 _fmt_metric("final_test_acc", rs.get("final_test_acc"))]
                for rs in rounds if isinstance(rs, dict)]
        blocks.append(("h3", f"IMP rounds of {r.name}"))
        blocks.append(("table", ["round", "sparsity", METRIC_LABELS["test_acc_selected"],
                                 METRIC_LABELS["final_test_acc"]], rows))
    return blocks


def _header_lines(runs: Sequence[Run], groups: Sequence[Group], sources: Sequence[str]) -> list[str]:
    def values(key: str) -> str:
        seen = sorted({str(r.get(key)) for r in runs if r.get(key) is not None})
        return ", ".join(seen) if seen else _MISSING

    incomplete = [r for r in runs if not r.completed]
    wall = sum(r.metric("wall_time_s") for r in runs if _finite(r.get("wall_time_s")))
    seeds = sorted({str(r.seed) for r in runs if r.seed is not None})
    lines = [
        f"{len(runs)} runs in {len(groups)} groups"
        + (f", {len(incomplete)} incomplete (flagged in the run table)" if incomplete else ", all complete"),
        f"datasets: {values('dataset')}; models: {values('model')}; methods: {values('method')}",
        f"seeds: {', '.join(seeds) if seeds else _MISSING}; total training wall time: {_fmt_duration(wall)}",
        f"read from: {', '.join(sources)}",
        "tables show mean ± sample std over the runs of a group (n runs; a cell's own n is given "
        "when some runs lack that value); accuracies in %",
    ]
    return lines


def _build_blocks(runs: Sequence[Run], groups: Sequence[Group], keys: Sequence[str], title: str,
                  sources: Sequence[str], plots: list[tuple[_PlotSpec, Path | None, str]],
                  out_dir: Path) -> list[Block]:
    blocks: list[Block] = [("h1", title), ("p", "What is in this report:"),
                           ("list", _header_lines(runs, groups, sources))]
    blocks.append(("h2", "Results by group"))
    blocks.append(("table", *_group_table(groups, keys)))
    blocks.append(("h2", "Plots"))
    skipped = []
    for i, (spec, made, reason) in enumerate(plots, 1):
        if made is None:
            skipped.append(f"{i}. {spec.title}: {reason}")
            continue
        blocks.append(("h3", f"{i}. {spec.title}"))
        blocks.append(("img", made.name, spec.title, spec.caption))
    if skipped:
        blocks.append(("p", "Plots skipped:"))
        blocks.append(("list", skipped))
    blocks.append(("h2", "Runs"))
    blocks.append(("table", *_run_table(runs, out_dir)))
    blocks.extend(_imp_blocks(runs))
    return blocks


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _render_md(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif kind == "table":
            headers, rows = b[1], b[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
                     "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n{b[3]}")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left}th{background:#f2f2f2}
tr:nth-child(even) td{background:#fafafa}img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}.wide{overflow-x:auto}"""


def _render_html(blocks: Sequence[Block], out_dir: Path) -> str:
    esc = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "itop report")
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{esc(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(b[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead>'
                        f"<tbody>{rows}</tbody></table></div>")
        elif kind == "img":
            data = base64.b64encode((out_dir / b[1]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{esc(b[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(b[3])}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _write_csv(path: Path, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(headers)
        w.writerows(rows)


def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v


def _write_csvs(runs: Sequence[Run], groups: Sequence[Group], keys: Sequence[str], out_dir: Path) -> None:
    headers = list(keys) + ["n", "incomplete"]
    for m in METRICS:
        headers += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    rows = []
    for g in groups:
        row = [_csv_value(g.key.get(k)) for k in keys] + [g.n, g.incomplete]
        for m in METRICS:
            s = g.stats[m]
            row += [_csv_value(s.mean), _csv_value(s.std), s.n]
        rows.append(row)
    _write_csv(out_dir / "groups.csv", headers, rows)
    # The path is relative to the report folder, as in report.md, so a report can be moved or
    # committed together with its runs.
    cols = ["run"] + list(_RUN_COLUMNS) + ["steps", "completed"] + list(METRICS) + ["path"]
    _write_csv(out_dir / "runs.csv", cols,
               ([r.name] + [_csv_value(r.get(k)) for k in _RUN_COLUMNS]
                + [_csv_value(r.get("steps")), r.completed]
                + [_csv_value(r.get(m)) for m in METRICS] + [_rel(r.path, out_dir)] for r in runs))


def write_report(paths: Iterable[str | os.PathLike | Run], out_dir: str | os.PathLike,
                 title: str | None = None, fmt: str = "md", by: Sequence[str] | None = None,
                 include_rounds: bool = False) -> Path:
    """Write a report over the runs under ``paths``: plots, tables and one report file.

    Writes into ``out_dir``: the PNG of each plot in :data:`PLOTS` the runs support,
    ``groups.csv`` and ``runs.csv``, and ``report.md`` (``fmt="md"``; plots linked by relative
    path) or a self-contained ``report.html`` (``fmt="html"``; plots embedded as base64).

    Args:
        paths: Run folders or parent folders (see :func:`collect`), or :class:`Run` objects.
        out_dir: Output folder (created).
        title: Report title; default ``"itop report"``.
        fmt: ``"md"`` or ``"html"``.
        by: Grouping keys (see :func:`aggregate`).
        include_rounds: List the rounds of IMP runs as runs of their own.

    Returns:
        The path of ``report.md`` or ``report.html``.

    Raises:
        ConfigError: Unknown ``fmt`` or grouping key.
        DataNotFoundError: No run found under ``paths``.
    """
    if fmt not in ("md", "html"):
        raise ConfigError(f"report format '{fmt}' is not one of md, html")
    items = list(paths)
    runs = [p for p in items if isinstance(p, Run)]
    folders = [p for p in items if not isinstance(p, Run)]
    if folders or not runs:
        runs += collect(folders, include_rounds=include_rounds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = aggregate(runs, by)
    keys = list(groups[0].key) if groups else ["method"]
    plots: list[tuple[_PlotSpec, Path | None, str]] = []
    for spec in PLOTS:
        target = out / spec.filename
        try:
            made = spec.fn(runs, target, by)
        except SkipPlot as e:
            log.info("skipped %s: %s", spec.filename, e)
            if target.exists():  # stale from an earlier report over other runs
                target.unlink()
            plots.append((spec, None, str(e)))
        else:
            plots.append((spec, made, ""))
    sources = [str(p) for p in folders] or sorted({str(r.path.parent) for r in runs})
    blocks = _build_blocks(runs, groups, keys, title or "itop report", sources, plots, out)
    _write_csvs(runs, groups, keys, out)
    if fmt == "html":
        path = out / "report.html"
        path.write_text(_render_html(blocks, out), encoding="utf-8")
    else:
        path = out / "report.md"
        path.write_text(_render_md(blocks), encoding="utf-8")
    log.info("wrote %s", path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``itop report RUN_DIRS... [--out DIR] [--title T] [--format md|html] [--by KEYS]``.

    Args:
        argv: Arguments after ``itop report``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 2 on an input error (printed as one line on stderr).
    """
    import argparse
    import sys

    from .errors import ItopError

    parser = argparse.ArgumentParser(
        prog="itop report",
        description="Tables (mean ± std over seeds) and plots (accuracy vs R_s, R_s over steps, "
                    "accuracy vs sparsity, per-layer density/R_s, lifetimes, reliable R_s) over "
                    "run folders written by itop train.")
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR",
                        help="run folders, or folders searched recursively for runs")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--title", default=None, help="report title (default: itop report)")
    parser.add_argument("--format", choices=["md", "html"], default="md",
                        help="md: report.md next to the PNGs; html: one self-contained report.html")
    parser.add_argument("--by", default=None,
                        help="comma-separated grouping keys (default: method plus the keys among "
                             f"{', '.join(GROUP_KEYS)} that vary)")
    parser.add_argument("--include-rounds", action="store_true",
                        help="also list the round-K runs of iterative magnitude pruning")
    args = parser.parse_args(argv)
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    try:
        path = write_report(args.paths, args.out, title=args.title, fmt=args.format, by=by,
                            include_rounds=args.include_rounds)
    except ItopError as e:
        print(f"itop: error: {e}", file=sys.stderr)  # noqa: T201
        return 2
    print(f"report written to {path}")  # noqa: T201
    return 0
