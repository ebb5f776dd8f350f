"""Sweep running: each run a subprocess ``itop train ... --resume auto``, ``jobs`` at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError
from ..config import RunConfig, dump_config
from .plan import CONTROL_KEYS, RunResult, RunSpec, SweepPlan, plan_sweep

__all__ = ["format_table", "run_sweep"]


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
    """Ask every child to stop (SIGTERM: ``itop train`` checkpoints the step it is in and exits
    143), then terminate, then kill.

    SIGTERM rather than SIGINT: under SLURM every process of the job already received a SIGTERM,
    which a stopping ``itop train`` ignores when repeated, while a second SIGINT would make it
    stop at once without the checkpoint of its current step.
    """
    for proc in running:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
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
    ``KeyboardInterrupt`` (SIGINT or SIGTERM) the children are asked to stop (then killed) and the interrupt is
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
    package_root = str(Path(__file__).resolve().parents[3])
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
