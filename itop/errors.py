"""User-facing errors.

Every error a user can cause by bad input is an :class:`ItopError` whose message is one line
that says what was wrong and how to fix it. The CLI prints that line instead of a traceback.
Each subclass also derives from the matching built-in exception, so ``except ValueError``
keeps working for library users.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ItopError(Exception):
    """Base class: an error caused by input, with a one-line message naming the fix."""


class ConfigError(ItopError, ValueError):
    """An invalid argument or configuration value (unknown name, value out of range)."""


class DataNotFoundError(ItopError, FileNotFoundError):
    """Dataset files are missing and cannot be downloaded."""


class CheckpointError(ItopError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or belongs to a different run."""


class DivergenceError(ItopError, FloatingPointError):
    """Training produced a non-finite loss or gradient."""


class Interrupted(KeyboardInterrupt):
    """A run stopped on a signal (SIGINT, SIGTERM) after writing a checkpoint of where it was.

    A :class:`KeyboardInterrupt`, so code that already handles Ctrl-C keeps working. Not an
    :class:`ItopError`: nothing was wrong with the input.

    Attributes:
        signum: The signal received (``signal.SIGINT``, ``signal.SIGTERM``).
        step: The training step the run stopped at (``None`` when it had not started).
        checkpoint: The checkpoint holding that step (``None`` when none was written).
        exit_code: ``128 + signum``, the shell's convention (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None) -> None:
        super().__init__(signum, step, checkpoint)
        self.signum = int(signum)
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the known name nearest to ``name``, else ``""``.

    The one nearest-name helper: every "unknown ..." message in itop ends with it.
    """
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    """Build the error for an unknown registry name, suggesting the nearest known one.

    Args:
        kind: What was looked up, e.g. ``"method"``.
        name: The name the user gave.
        known: The valid names.

    Returns:
        A :class:`ConfigError` (to be raised by the caller) such as
        ``unknown method 'rigll'; did you mean 'rigl'? Known methods: dense, rigl, set``.
    """
    known = sorted(known)
    hint = did_you_mean(name, known) or "."
    return ConfigError(f"unknown {kind} '{name}'{hint} Known {kind}s: {', '.join(known)}")


def check_sparsity(value: object, what: str = "sparsity") -> float:
    """Return ``value`` as a float if it is a sparsity in [0, 1); else raise ConfigError.

    The one check of the sparsity range, shared by the engine, the method configs and the
    run config.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(
            f"{what} must be in [0, 1) (the fraction of weights set to zero), got {value!r}; "
            "e.g. sparsity=0.9 keeps 10% of the weights"
        )
    return float(value)
