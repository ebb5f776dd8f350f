"""Progress within an epoch: a bar on a terminal, plain periodic lines otherwise.

An epoch of ImageNet is an hour; without this the run is silent between epoch lines. The loop
calls its ``on_step`` with a :class:`StepInfo` after every optimizer step; a display turns
that into output:

* :class:`ProgressBar` redraws one line (``\\r``) at most every ``refresh_s`` seconds: steps
  done of the epoch, it/s, the epoch's ETA and the epoch's mean training loss so far; the line
  is cleared when the epoch ends, so the epoch's log line replaces it.
* :class:`ProgressLines` writes a plain line (for log files, CI, ``| tee``) every ``every_s``
  seconds, or after each ``every_fraction`` of the epoch once ``min_gap_s`` have passed since
  the last line, so short epochs stay quiet and long ones report steadily.

The ``progress`` config key picks one (:data:`PROGRESS_MODES`): ``auto`` (a bar on an
interactive terminal, lines otherwise), ``bar``, ``lines`` or ``none``. The command line builds
the display (on rank 0 only, so a torchrun job prints once); displays only write to the
streams they are given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from ..registry import Registry

__all__ = ["PROGRESS_MODES", "ProgressBar", "ProgressLines", "StepInfo", "format_duration", "make_progress"]


@dataclass(frozen=True)
class StepInfo:
    """Where training is after one optimizer step (what ``on_step`` receives).

    Attributes:
        epoch: The epoch, from 0.
        epochs: Epochs of the run.
        step: Optimizer steps done in this epoch (1 after its first step).
        steps: Optimizer steps per epoch.
        global_step: Optimizer steps done in the run.
        total_steps: Optimizer steps the run will do (``max_steps`` if it stops earlier).
        loss: Mean training loss of the epoch so far (this process's samples).
        seconds: Wall seconds since this epoch began in this process (since the resume, if
            the run resumed inside it).
        done: Steps done in those ``seconds`` (the rate is ``done / seconds``).
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    global_step: int
    total_steps: int
    loss: float
    seconds: float
    done: int

    @property
    def rate(self) -> float:
        """Optimizer steps per second in this epoch so far (0 before any time has passed)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def eta(self, remaining: int) -> float | None:
        """Seconds for ``remaining`` more steps at the current rate (``None``: rate unknown)."""
        rate = self.rate
        return remaining / rate if rate > 0 else None


def format_duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _loss(value: float) -> str:
    return f"{value:.4f}" if value == value else "n/a"


class ProgressBar:
    """A one-line progress bar redrawn in place (for an interactive terminal).

    Args:
        stream: Where to draw (the command line passes stderr).
        clock: Monotonic seconds, for throttling (a fake one in tests).
        width: Characters of the bar.
        refresh_s: Least time between redraws (the last step of an epoch always draws).
    """

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic, width: int = 30,
                 refresh_s: float = 0.2) -> None:
        self.stream = stream
        self.clock = clock
        self.width = width
        self.refresh_s = refresh_s
        self._last: float | None = None
        self._drawn = 0  # length of the line on screen

    def __call__(self, info: StepInfo) -> None:
        now = self.clock()
        end = info.step >= info.steps
        if not end and self._last is not None and now - self._last < self.refresh_s:
            return
        if end:  # the epoch's log line follows: leave a clean line for it
            self.close()
            return
        self._last = now
        filled = min(self.width, int(self.width * info.step / max(info.steps, 1)))
        line = (f"epoch {info.epoch + 1}/{info.epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{info.step}/{info.steps}  {info.rate:.1f} it/s  "
                f"ETA {format_duration(info.eta(info.steps - info.step))}  loss {_loss(info.loss)}")
        self.stream.write("\r" + line + " " * max(0, self._drawn - len(line)))
        self._drawn = len(line)
        self.stream.flush()

    def close(self) -> None:
        """Clear the bar (at the end of an epoch, or when training stops inside one)."""
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
        self._drawn = 0
        self._last = None


class ProgressLines:
    """Plain progress lines at a steady pace (for log files and pipes).

    A line is written when ``every_s`` seconds have passed since the last one (or since the
    epoch began), or when another ``every_fraction`` of the epoch is done and at least
    ``min_gap_s`` seconds have passed; never for the epoch's last step (its log line follows).

    Args:
        stream: Where to write (the command line passes stdout, beside the epoch lines).
        clock: Monotonic seconds (a fake one in tests).
        every_s, every_fraction, min_gap_s: The pace, as above.
    """

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic, every_s: float = 60.0,
                 every_fraction: float = 0.1, min_gap_s: float = 10.0) -> None:
        self.stream = stream
        self.clock = clock
        self.every_s = every_s
        self.every_fraction = every_fraction
        self.min_gap_s = min_gap_s
        self._epoch: int | None = None
        self._last_time = 0.0
        self._last_step = 0

    def __call__(self, info: StepInfo) -> None:
        now = self.clock()
        if info.done == 1 or info.epoch != self._epoch:  # began info.seconds ago
            self._epoch = info.epoch
            self._last_time = now - info.seconds
            self._last_step = info.step - info.done
        if info.step >= info.steps:
            return
        waited = now - self._last_time
        fraction = (info.step - self._last_step) / max(info.steps, 1)
        if waited < self.every_s and not (fraction >= self.every_fraction and waited >= self.min_gap_s):
            return
        self._last_time, self._last_step = now, info.step
        run_eta = info.eta(info.total_steps - info.global_step)
        self.stream.write(
            f"epoch {info.epoch + 1}/{info.epochs}  step {info.step}/{info.steps} "
            f"({100.0 * info.step / max(info.steps, 1):.0f}%)  {info.rate:.2f} it/s  "
            f"epoch ETA {format_duration(info.eta(info.steps - info.step))}  "
            f"run ETA {format_duration(run_eta)}  loss {_loss(info.loss)}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        """Nothing to clear (lines stay)."""


Display = Callable[[StepInfo], None]

#: ``progress`` values: ``fn(bar_stream, line_stream, interactive, clock) -> display or None``.
PROGRESS_MODES: Registry[Callable[[TextIO, TextIO, bool, Callable[[], float]], Display | None]] = Registry(
    "progress mode")
PROGRESS_MODES.register("auto", lambda bar, lines, interactive, clock: (
    ProgressBar(bar, clock=clock) if interactive else ProgressLines(lines, clock=clock)))
PROGRESS_MODES.register("bar", lambda bar, lines, interactive, clock: ProgressBar(bar, clock=clock))
PROGRESS_MODES.register("lines", lambda bar, lines, interactive, clock: ProgressLines(lines, clock=clock))
PROGRESS_MODES.register("none", lambda bar, lines, interactive, clock: None)


def make_progress(mode: str, *, bar_stream: TextIO, line_stream: TextIO, interactive: bool,
                  clock: Callable[[], float] = time.monotonic) -> Display | None:
    """The display of a ``progress`` mode (``None`` for ``none``).

    Args:
        mode: ``auto``, ``bar``, ``lines`` or ``none``.
        bar_stream: Where a bar is drawn (stderr).
        line_stream: Where lines are written (stdout).
        interactive: Whether ``bar_stream`` is an interactive terminal (``auto`` draws a bar).
        clock: Monotonic seconds.
    """
    return PROGRESS_MODES.lookup(mode)(bar_stream, line_stream, interactive, clock)
