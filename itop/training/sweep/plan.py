"""Sweep planning: read a sweep file, expand its grid at one scale, validate and name every run."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, did_you_mean
from ..config import CONTROL, KEYS, NEVER, RunConfig, check_key, coerce_value, read_yaml

__all__ = ["CONTROL_KEYS", "SCALES", "RunResult", "RunSpec", "SweepPlan", "expand", "load_sweep", "plan_sweep"]

SCALES = ("smoke", "cpu", "paper")
TOP_KEYS = ("name", "description", "base", "grid", "runs_extra", "rules", "exclude", "scales")
SCALE_KEYS = ("description", "base", "grid", "runs_extra", "rules", "exclude")
# Keys the sweep sets itself.
RESERVED = {
    "name": "the sweep names every run after the values that vary",
    "resume": "every run is started with --resume auto",
}
# What a sweep run does differently from a plain `itop train` unless the file says otherwise.
SWEEP_DEFAULTS: dict[str, Any] = {"progress": "none", "tensorboard": False}
# Keys that do not change what a run computes (role "control" in the config schema): a run
# folder made with other values is reused.
CONTROL_KEYS = frozenset(k for k, spec in KEYS.items() if spec.role == CONTROL)
SWEEP_FILES = ("sweep-run.yaml", "sweep.log")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        name: Deterministic run name built from the values that vary across the sweep.
        config: The full :class:`~itop.training.config.RunConfig` mapping of the run (``name`` and
            ``out_dir`` included), as written to the YAML file ``itop train`` reads.
        out_dir: The sweep's folder, ``<out_dir>/<sweep name>-<scale>``; the run's outputs go to
            ``out_dir / name``.
        values: The varying keys and their (resolved) values, in name order.
    """

    name: str
    config: dict[str, Any]
    out_dir: Path
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name

    @property
    def config_path(self) -> Path:
        return self.run_dir / SWEEP_FILES[0]

    @property
    def log_path(self) -> Path:
        return self.run_dir / SWEEP_FILES[1]


@dataclass
class SweepPlan:
    """An expanded, validated sweep: what :func:`run_sweep` will run."""

    name: str
    scale: str
    path: Path
    out_dir: Path
    runs: list[RunSpec]
    varying: list[str]
    grid: dict[str, list[Any]]
    excluded: int = 0
    duplicates: int = 0
    description: str = ""


@dataclass
class RunResult:
    """Outcome of one run: ``status`` is ``done``, ``skipped`` (already completed), ``failed``
    or, in a dry run, ``planned``."""

    name: str
    status: str
    seconds: float
    run_dir: Path
    log: Path | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None


# -- reading and expanding ---------------------------------------------------------------------


def _closest(word: str, options: Sequence[str]) -> str:
    return did_you_mean(word, options) or f"; valid: {', '.join(options)}"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of key: value, got {type(value).__name__}")
    return value


def _config_key(key: Any, where: str) -> str:
    norm = check_key(key, where)
    if norm in RESERVED:
        raise ConfigError(f"config key '{norm}' cannot be set in {where}: {RESERVED[norm]}")
    return norm


def _value(key: str, value: Any, where: str) -> Any:
    try:
        return coerce_value(key, value)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _config_mapping(raw: Any, where: str) -> dict[str, Any]:
    out = {}
    for key, value in _mapping(raw, where).items():
        k = _config_key(key, where)
        out[k] = _value(k, value, f"{where}, key '{k}'")
    return out


def _grid(raw: Any, where: str) -> dict[str, list[Any]]:
    out = {}
    for key, values in _mapping(raw, where).items():
        k = _config_key(key, where)
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{where}: '{k}' must be a non-empty list of values, got {values!r} "
                f"(write {k}: [{values!r}] for a single value)"
            )
        out[k] = [_value(k, v, f"{where}, key '{k}'") for v in values]
    return out


def _mapping_list(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of mappings (- {{key: value}}), got {type(raw).__name__}")
    return [_config_mapping(item, f"{where}[{i}]") for i, item in enumerate(raw)]


def _rules(raw: Any, where: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of {{when: {{...}}, set: {{...}}}} entries")
    out = []
    for i, item in enumerate(raw):
        item = _mapping(item, f"{where}[{i}]")
        if set(item) != {"when", "set"}:
            raise ConfigError(f"{where}[{i}] needs exactly the keys `when` and `set`, got {', '.join(map(str, item))}")
        out.append((_config_mapping(item["when"], f"{where}[{i}] when"),
                    _config_mapping(item["set"], f"{where}[{i}] set")))
    return out


def _section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "base" in raw:
        out["base"] = _config_mapping(raw["base"], f"{where} base")
    if "grid" in raw:
        out["grid"] = _grid(raw["grid"], f"{where} grid")
    if "runs_extra" in raw:
        out["runs_extra"] = _mapping_list(raw["runs_extra"], f"{where} runs_extra")
    if "rules" in raw:
        out["rules"] = _rules(raw["rules"], f"{where} rules")
    if "exclude" in raw:
        out["exclude"] = _mapping_list(raw["exclude"], f"{where} exclude")
    return out


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file's structure and keys (values are checked by :func:`plan_sweep`).

    Returns:
        ``{"name", "description", "base", "grid", "runs_extra", "rules", "exclude", "scales"}`` with
        config keys normalised (``batch-size`` -> ``batch_size``) and ``never`` translated.

    Raises:
        ConfigError: Unreadable file, unknown top-level, scale or config keys (with the nearest
            valid name), or malformed sections.
    """
    path = Path(path)
    raw = read_yaml(path, "sweep file")
    where = f"sweep {path}"
    raw = _mapping(raw, where)
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(f"unknown key '{key}' at the top of {where}{_closest(key, TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or not _safe(name) == name:
        raise ConfigError(f"{where} needs a `name:` made of letters, digits, '.', '_' or '-', got {name!r}")
    sweep = {"name": name, "description": str(raw.get("description") or "").strip(),
             "base": {}, "grid": {}, "runs_extra": [], "rules": [], "exclude": [], "scales": {}}
    sweep.update(_section(raw, where))
    scales = _mapping(raw.get("scales"), f"{where} scales")
    for scale, section in scales.items():
        if scale not in SCALES:
            raise ConfigError(f"unknown scale '{scale}' in {where}{_closest(scale, SCALES)}")
        swhere = f"{where} scale '{scale}'"
        section = _mapping(section, swhere)
        for key in section:
            if key not in SCALE_KEYS:
                raise ConfigError(f"unknown key '{key}' in {swhere}{_closest(key, SCALE_KEYS)}")
        sweep["scales"][scale] = _section(section, swhere)
        sweep["scales"][scale]["description"] = str(section.get("description") or "").strip()
    return sweep


def _safe(text: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "._+-") else "_" for c in text)


def _format(key: str, value: Any) -> str:
    """One part of a run name: the key's label (config schema) and the value."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:.10g}"
    elif value is None:
        text = "none"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    else:
        text = str(value)
    label = KEYS[key].label
    return _safe((key if label is None else label) + text)


def _name_order(keys: set[str]) -> list[str]:
    """Name parts by the keys' rank in the schema (the method first, the seed last), then
    config order."""
    order = {k: i for i, k in enumerate(KEYS)}
    return sorted(keys, key=lambda k: (KEYS[k].rank, order[k]))


def _describe(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in point.items()) or "the base config"


def _identity(resolved: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in resolved.items() if k not in ("name", "out_dir")}, sort_keys=True, default=str)


def plan_sweep(
    sweep_path: str | Path,
    scale: str = "cpu",
    out_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SweepPlan:
    """Expand a sweep at one scale and validate every run (nothing is started or written).

    Args:
        sweep_path: The sweep YAML file.
        scale: ``smoke``, ``cpu`` or ``paper``; the file must define it under ``scales``.
        out_dir: Root folder (default: the sweep's ``out_dir`` key, else ``runs``); runs go to
            ``<out_dir>/<sweep name>-<scale>/<run name>``.
        overrides: Config keys set on every run (e.g. ``{"data_dir": "/data"}``); they may not
            touch the keys the sweep varies.

    Raises:
        ConfigError: Anything :func:`load_sweep` rejects, an invalid value in any run (the message
            names the run's grid values), a scale the file does not define, or an override of a
            varied key.
    """
    path = Path(sweep_path)
    sweep = load_sweep(path)
    if scale not in SCALES:
        raise ConfigError(f"unknown scale '{scale}'{_closest(scale, SCALES)}")
    if scale not in sweep["scales"]:
        known = ", ".join(sweep["scales"]) or "none"
        raise ConfigError(f"sweep {path} has no scale '{scale}' (it defines: {known}); add `scales: {{{scale}: {{}}}}`")
    sc = sweep["scales"][scale]
    where = f"sweep {path} (scale {scale})"
    base = {**SWEEP_DEFAULTS, **sweep["base"], **sc.get("base", {})}
    grid = {**sweep["grid"], **sc.get("grid", {})}
    extras = sc.get("runs_extra", sweep["runs_extra"])
    excludes = sc.get("exclude", sweep["exclude"])
    rules = sc.get("rules", sweep["rules"])
    over = _config_mapping(dict(overrides or {}), "the overrides")
    varied = set(grid) | {k for extra in extras for k in extra}
    if "out_dir" in varied:
        raise ConfigError(f"{where}: out_dir can only be set in base (or with --out-dir): it is the sweep's root folder")
    clash = sorted(varied & set(over))
    if clash:
        raise ConfigError(
            f"cannot override {', '.join(clash)}: {where} varies it; change the grid in the sweep file instead"
        )
    root = Path(out_dir) if out_dir is not None else Path(over.get("out_dir") or base.get("out_dir") or "runs")
    folder = root / f"{sweep['name']}-{scale}"

    points: list[dict[str, Any]] = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        points.append(dict(zip(keys, combo, strict=True)))
    for extra in extras:
        free = [k for k in keys if k not in extra]
        for combo in itertools.product(*(grid[k] for k in free)):
            points.append({**dict(zip(free, combo, strict=True)), **extra})
    if "seed" in grid:  # seed-major: a study stopped early has whole seeds, extras included
        rank = {repr(v): i for i, v in enumerate(grid["seed"])}
        points.sort(key=lambda p: rank.get(repr(p.get("seed")), len(rank)))

    defaults = RunConfig().to_flat()
    candidates: list[tuple[dict[str, Any], RunConfig, dict[str, Any]]] = []
    for point in points:
        merged = {**base, **point}
        values = dict(merged)
        for when, setting in rules:
            if all(merged.get(k, defaults[k]) == v for k, v in when.items()):
                values.update(setting)
        values.update(over)
        try:
            cfg = RunConfig.from_flat(values)
            if cfg.update_interval == NEVER and cfg.reliable_steps is None:
                raise ConfigError(
                    "update_interval 'never' needs reliable_steps set (the reliable R_s threshold "
                    "defaults to ΔT); add e.g. reliable_steps: 100 to base"
                )
            cfg.validate()
            resolved = cfg.resolved()
        except ConfigError as e:
            raise ConfigError(f"{where}, run with {_describe(point)}: {e}") from None
        candidates.append((point, cfg, resolved))

    excluded = 0
    kept = []
    for point, cfg, resolved in candidates:
        if any(all(cfg.get(k) == v for k, v in ex.items()) for ex in excludes):
            excluded += 1
        else:
            kept.append((point, cfg, resolved))
    seen: set[str] = set()
    unique = []
    for item in kept:
        ident = _identity(item[2])
        if ident not in seen:
            seen.add(ident)
            unique.append(item)
    duplicates = len(kept) - len(unique)

    varying = _name_order({k for k in varied if len({repr(r[k]) for _, _, r in unique}) > 1})
    runs: list[RunSpec] = []
    names: dict[str, dict[str, Any]] = {}
    for point, cfg, resolved in unique:
        shown = {k: resolved[k] for k in varying}
        name = "-".join(_format(k, v) for k, v in shown.items()) or "run"
        if name in names:
            raise ConfigError(
                f"{where}: runs {_describe(names[name])} and {_describe(point)} would share the name "
                f"'{name}'; make their values differ more clearly"
            )
        names[name] = point
        cfg = cfg.replace(name=name, out_dir=str(folder))
        runs.append(RunSpec(name=name, config=cfg.to_dict(), out_dir=folder, values=shown))
    return SweepPlan(name=sweep["name"], scale=scale, path=path, out_dir=folder, runs=runs,
                     varying=varying, grid=grid, excluded=excluded, duplicates=duplicates,
                     description=sc.get("description") or sweep["description"])


def expand(sweep_path: str | Path, scale: str = "cpu", out_dir: str | Path | None = None,
           overrides: Mapping[str, Any] | None = None) -> list[RunSpec]:
    """The validated runs of a sweep at one scale (see :func:`plan_sweep`)."""
    return plan_sweep(sweep_path, scale, out_dir, overrides).runs
