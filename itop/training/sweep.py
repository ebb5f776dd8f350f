"""Sweeps: a grid of training runs from one YAML file (``itop sweep``).

A sweep file describes a study as a base config plus a grid of values; every point of the grid
is one ``itop train`` run. The same file holds several *scales* of the study: ``smoke``
(seconds, for tests), ``cpu`` (a laptop-sized version) and ``paper`` (the published setting).

File format (YAML)::

    name: itop-rate                  # the sweep's folder is <out_dir>/<name>-<scale>
    description: free text           # optional
    base:                            # config keys shared by every run (any `itop train` key)
      batch_size: 128
    grid:                            # key -> list of values; the product is the runs
      seed: [0, 1, 2]                # the first key varies slowest (put seed first to get
      method: [rigl, set]            # one complete seed early)
      update_interval: [100, never]  # `never`: no topology update at all (see below)
    runs_extra:                      # optional: more runs, each merged onto base and crossed
      - {method: rigl-itop, multiplier: 2}  # with the grid keys it does not set
    rules:                           # optional: keys set on the runs whose base + grid values
      - when: {method: rigl-itop}    # match every key of `when` (all matching rules apply,
        set: {update_interval: 50}   # in order; a rule sees the grid values, not other rules)
    exclude:                         # optional: drop every run whose final values match all keys
      - {method: set, update_interval: never}
    scales:                          # each scale the sweep can run at
      smoke: {base: {...}, grid: {...}}
      cpu: {}
      paper: {base: {...}}

A scale's ``base`` and ``grid`` are merged key by key onto the top-level ones (a grid key given
at a scale replaces that key's list); its ``runs_extra``, ``rules`` and ``exclude``, when given,
replace the top-level lists. Command-line overrides (``--data-dir``) come last; they may not
touch the keys the sweep varies. Grid values may be ``null``, which (as in any config) means the key's default:
for the sparsifier keys, the method's preset. ``update_interval: never`` (as in ``itop
train``) means "no topology updates with this method" (a static mask that keeps the method's
name and every other setting). Such runs need ``reliable_steps`` set, since the reliable R_s
threshold defaults to ΔT.

Runs whose resolved configs (method presets filled in) are identical are run once: dense
training ignores ``sparsity``, so ``{method: dense}`` crossed with four sparsities is one run
per seed. Every run is validated before any starts; unknown keys fail with the nearest valid
name. A run is named after the values that vary across the sweep, e.g.
``rigl-s0.98-dt100-b128-x1-seed0``, so names are deterministic and a rerun finds its folders:
completed runs (``summary.json`` with ``completed: true``) are skipped, interrupted ones resume
from their last checkpoint (each run is ``itop train ... --resume auto``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, did_you_mean
from .config import CONTROL, KEYS, NEVER, RunConfig, check_key, coerce_value, dump_config, read_yaml

__all__ = [
    "SCALES",
    "RunResult",
    "RunSpec",
    "SweepPlan",
    "expand",
    "format_table",
    "load_sweep",
    "plan_sweep",
    "run_sweep",
]

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


# -- running -----------------------------------------------------------------------------------


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mismatch(spec: RunSpec) -> str | None:
    """Why the run folder holds a different run than ``spec`` (``None`` if it does not)."""
    try:
        saved = yaml.safe_load((spec.run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict):
        return None
    resolved = RunConfig.from_flat(spec.config).resolved()
    for key, value in resolved.items():
        if key in CONTROL_KEYS or key not in saved:
            continue
        if saved[key] != value:
            return (f"run folder {spec.run_dir} holds a run with {key}={saved[key]!r}, this sweep "
                    f"has {key}={value!r}; move that folder away or pick another --out-dir")
    return None


def _last_error(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("itop: error:") or line.startswith("itop: interrupted"):
            return line
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else "no output"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _stop(running: dict[subprocess.Popen, Any], grace: float = 15.0) -> None:
    """Interrupt every child (they keep their checkpoints), then terminate, then kill."""
    for proc in running:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGINT)
            except OSError:
                pass
    for sig_grace, action in ((grace, "terminate"), (5.0, "kill")):
        deadline = time.monotonic() + sig_grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        alive = [p for p in running if p.poll() is None]
        if not alive:
            return
        for proc in alive:
            getattr(proc, action)()
    for proc in running:
        proc.wait()


def run_sweep(
    sweep: str | Path | SweepPlan,
    scale: str = "cpu",
    out_dir: str | Path | None = None,
    jobs: int = 1,
    threads: int | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    overrides: Mapping[str, Any] | None = None,
    poll_seconds: float = 0.2,
) -> list[RunResult]:
    """Run every run of a sweep that has not completed yet, ``jobs`` at a time.

    Each run is a subprocess ``python -m itop train -c <run dir>/sweep-run.yaml --resume auto
    --threads T`` whose output goes to ``<run dir>/sweep.log``. Runs with a completed
    ``summary.json`` are skipped; interrupted ones continue from their newest checkpoint. A
    failed run is reported (log path and last error line) and the others go on. On
    ``KeyboardInterrupt`` the children are interrupted (then terminated) and the interrupt is
    re-raised; running the sweep again continues where it stopped.

    Args:
        sweep: A sweep file (expanded with ``scale``, ``out_dir`` and ``overrides``) or a plan
            from :func:`plan_sweep`.
        scale: ``smoke``, ``cpu`` or ``paper``.
        out_dir: Root output folder (see :func:`plan_sweep`).
        jobs: Runs in parallel.
        threads: Torch threads per run (default: the file's ``threads``, else
            ``max(1, cpu_count // jobs)``).
        dry_run: Only report what would run (``planned``) or be skipped; start nothing.
        progress: Called with one line per event (run finished, with elapsed time and ETA).
        overrides: Config keys set on every run.
        poll_seconds: How often finished children are collected.

    Returns:
        One :class:`RunResult` per run, in plan order.
    """
    plan = sweep if isinstance(sweep, SweepPlan) else plan_sweep(sweep, scale, out_dir, overrides)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    say = progress or (lambda line: None)
    default_threads = max(1, _cpu_count() // jobs)

    results: dict[str, RunResult] = {}
    todo: list[RunSpec] = []
    for spec in plan.runs:
        summary = _read_summary(spec.run_dir)
        problem = _mismatch(spec)
        if problem:
            results[spec.name] = RunResult(spec.name, "failed", 0.0, spec.run_dir, None, problem, summary)
        elif summary is not None and summary.get("completed") is True:
            results[spec.name] = RunResult(spec.name, "skipped", 0.0, spec.run_dir, None, None, summary)
        elif dry_run:
            results[spec.name] = RunResult(spec.name, "planned", 0.0, spec.run_dir)
        else:
            todo.append(spec)
    total = len(plan.runs)
    skipped = sum(r.status == "skipped" for r in results.values())
    if skipped:
        say(f"{skipped} of {total} runs already completed: skipped")
    for r in results.values():
        if r.status == "failed":
            say(f"FAILED  {r.name}: {r.error}")
    if dry_run or not todo:
        return [results[s.name] for s in plan.runs]

    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    queue = deque(todo)
    running: dict[subprocess.Popen, tuple[RunSpec, float, int]] = {}
    finished = len(results)
    times: list[float] = []
    start = time.monotonic()

    def launch(spec: RunSpec) -> None:
        t = threads or spec.config.get("threads") or default_threads
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(spec.config, spec.config_path)
        cmd = [sys.executable, "-m", "itop", "train", "-c", str(spec.config_path), "--resume", "auto",
               "--progress", str(spec.config["progress"]),
               "--tensorboard", str(spec.config["tensorboard"]).lower(), "--threads", str(t)]
        child_env = {**env, "OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)}
        with spec.log_path.open("ab") as log:
            offset = log.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"# itop sweep {stamp}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=child_env, start_new_session=True)
        running[proc] = (spec, time.monotonic(), offset)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                launch(queue.popleft())
            time.sleep(poll_seconds)
            for proc in [p for p in running if p.poll() is not None]:
                spec, t0, offset = running.pop(proc)
                seconds = time.monotonic() - t0
                summary = _read_summary(spec.run_dir)
                if proc.returncode == 0 and summary is not None and summary.get("completed") is True:
                    result = RunResult(spec.name, "done", seconds, spec.run_dir, spec.log_path, None, summary)
                else:
                    error = _last_error(spec.log_path, offset)
                    if proc.returncode == 0:
                        error = f"exited without completing training (max_steps set?): {error}"
                    result = RunResult(spec.name, "failed", seconds, spec.run_dir, spec.log_path,
                                       f"exit {proc.returncode}: {error}", summary)
                results[spec.name] = result
                times.append(seconds)
                finished += 1
                left = len(queue) + len(running)
                mean = sum(times) / len(times)
                eta = mean * left / max(1, min(jobs, left)) if left else 0.0
                width = len(str(total))
                line = (f"[{finished:>{width}}/{total}] {result.status:6s} {spec.name}  {_duration(seconds)}"
                        f"  | elapsed {_duration(time.monotonic() - start)}, ETA {_duration(eta)}")
                if result.status == "failed":
                    line += f"\n    {result.error}\n    log: {spec.log_path}"
                say(line)
    except BaseException:
        _stop(running)
        raise
    return [results[s.name] for s in plan.runs]


def format_table(results: Sequence[RunResult]) -> str:
    """A plain-text table: run, status, time, test accuracy, R_s and reliable R_s."""
    header = ("run", "status", "time", "test acc", "R_s", "reliable R_s")
    rows = []
    for r in results:
        s = r.summary or {}

        def num(key: str, s: dict[str, Any] = s) -> str:
            v = s.get(key)
            return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"

        rows.append((r.name, r.status, _duration(r.seconds) if r.seconds else "-",
                     num("test_acc_selected"), num("itop_rate"), num("reliable_itop_rate")))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)
