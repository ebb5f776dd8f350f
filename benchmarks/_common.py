"""Shared helpers of the benchmark scripts: machine header, thread setup, statistics, output.

Not part of the ``itop`` package; imported by ``benchmarks/bench_*.py`` (which put this folder
on ``sys.path`` so the scripts run from the repository root or from here).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CpuMonitor",
    "available_cpus",
    "bootstrap_ratio_ci",
    "cpu_model",
    "emit_json",
    "machine_info",
    "no_gc",
    "print_header",
    "print_table",
    "quantiles",
    "set_threads",
    "timed",
    "verdict",
]


# ----------------------------------------------------------------------------------------------
# Machine


def available_cpus() -> int:
    """Logical CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (default: every available CPU) and return it."""
    n = available_cpus() if threads is None or threads <= 0 else int(threads)
    torch.set_num_threads(n)
    return torch.get_num_threads()


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """Versions and machine description recorded in every JSON line."""
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "cpus": available_cpus(),
        "cpu": cpu_model(),
        "platform": platform.platform(terse=True),
        "load_avg_start": _load_average(),
    }


def print_header(title: str, info: dict[str, Any]) -> None:
    print(f"== {title}")
    print(f"   torch {info['torch']}, numpy {info['numpy']}, python {info['python']} ({info['platform']})")
    print(f"   CPU: {info['cpu']}; {info['cpus']} logical CPUs available; torch threads = {info['threads']}")
    load = info.get("load_avg_start")
    if load is not None:
        print(f"   load average at start (1/5/15 min): {load[0]} / {load[1]} / {load[2]}")
        if load[0] > 0.5:
            print(
                "   WARNING: the machine is not idle; CPU contention from other processes makes "
                "timings slower and noisier (see the contention figure at the end)"
            )
    sys.stdout.flush()


class CpuMonitor:
    """Share of the machine's CPU time used by *other* processes while the benchmark runs.

    Reads the system-wide busy time from ``/proc/stat`` and this process's own CPU time; the
    difference, divided by wall time x CPUs, is the contention the timings were exposed to.
    ``fraction()`` is ``None`` where ``/proc/stat`` is unavailable (non-Linux).
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> tuple[float, float | None, float]:
        t = os.times()
        return time.perf_counter(), self._busy_seconds(), t.user + t.system

    def fraction(self) -> float | None:
        wall0, busy0, own0 = self._start
        wall1, busy1, own1 = self._sample()
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return None
        other = (busy1 - busy0) - (own1 - own0)
        return max(0.0, other / ((wall1 - wall0) * (os.cpu_count() or 1)))


# ----------------------------------------------------------------------------------------------
# Timing and statistics


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; return (seconds, its result)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class no_gc:
    """Context manager: collect garbage, then keep the collector off while timing."""

    def __enter__(self) -> no_gc:
        gc.collect()
        self._was = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._was:
            gc.enable()


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.25, 0.5, 0.75)) -> list[float]:
    a = np.asarray(values, dtype=np.float64)
    return [float(np.quantile(a, q)) for q in qs]


def bootstrap_ratio_ci(
    num_rounds: Sequence[Sequence[float]], den_rounds: Sequence[Sequence[float]], *,
    reps: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """95% bootstrap interval of ``median(all num) / median(all den)``, resampling rounds.

    ``num_rounds[i]`` and ``den_rounds[i]`` hold the step times measured in round ``i`` (the
    same number of steps in every round). Rounds are resampled as pairs, so slow drift of the
    machine, which moves both, cancels; each resample recomputes the same statistic as the
    reported ratio (medians over all steps of the chosen rounds).
    """
    a = np.asarray(num_rounds, dtype=np.float64)
    b = np.asarray(den_rounds, dtype=np.float64)
    if a.size == 0 or a.shape != b.shape or a.ndim != 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[0], size=(reps, a.shape[0]))
    ratios = np.median(a[idx].reshape(reps, -1), axis=1) / np.median(b[idx].reshape(reps, -1), axis=1)
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return float(lo), float(hi)


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


# ----------------------------------------------------------------------------------------------
# Output


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "  ") -> None:
    """Print an aligned plain-text table (numbers right-aligned, text left-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(_looks_numeric(r[i]) for r in cells[1:]) if len(cells) > 1 else False
        for i in range(len(headers))
    ]

    def fmt(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        return indent + "  ".join(parts).rstrip()

    print(fmt(cells[0]))
    print(indent + "  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row))
    sys.stdout.flush()


def _looks_numeric(s: str) -> bool:
    s = s.strip().rstrip("%x")
    for ch in "[]-, ":
        s = s.replace(ch, "")
    if not s:
        return False
    try:
        float(s)
    except ValueError:
        return False
    return True


def emit_json(payload: dict[str, Any]) -> None:
    """Print ``payload`` as exactly one line of JSON (the machine-readable summary)."""
    print(json.dumps(payload, separators=(", ", ": ")))
    sys.stdout.flush()
