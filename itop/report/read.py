"""Reading run folders: ``summary.json``, ``config.yaml`` and ``metrics.jsonl`` into :class:`Run`.

The first step of a report (read -> aggregate -> plot -> render). A run that stopped before
writing its summary gets one rebuilt from its records by the same schema the trainer writes
(:func:`itop.training.metrics.summary_from_records`), flagged incomplete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataNotFoundError
from ..training.metrics import reselect, summary_from_records

__all__ = ["Run", "collect"]

log = logging.getLogger(__name__)

# Summary keys that config.yaml holds under another name. config.yaml is the resolved config
# (method presets applied: dense forces sparsity 0), so for these it is read first.
_CONFIG_NAMES = {"target_sparsity": "sparsity"}
_ROUND_DIR = re.compile(r"^round-(\d+)$")


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


def _load_run(folder: Path) -> Run | None:
    """Read one run folder; ``None`` when it holds neither a summary nor metrics."""
    config = _read_config(folder)
    epochs, updates = _read_metrics(folder)
    summary = _read_json(folder / "summary.json") if (folder / "summary.json").is_file() else None
    note = ""
    if summary is None:
        if not epochs and not updates:
            return None
        summary = summary_from_records(folder, config, epochs, updates)
        note = f"no summary.json (stopped at step {summary['steps']}); values from metrics.jsonl"
    else:
        corrected = reselect(summary, epochs)
        if corrected is not None:
            log.warning("%s: selected epoch %s -> %s (its summary was written by an itop that selected "
                        "before the final sparsity; best.pt holds the old one)", folder.name,
                        summary.get("selected_epoch"), corrected["selected_epoch"])
            summary = corrected
            note = f"selection redone from metrics.jsonl (epoch {corrected['selected_epoch']} at the final sparsity)"
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


