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
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return ConfigError(f"unknown {kind} '{name}'{hint} Known {kind}s: {', '.join(known)}")
