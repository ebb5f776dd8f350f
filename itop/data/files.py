"""Small helpers shared by the dataset readers: file errors and the data-folder search."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from itop.errors import DataNotFoundError

DEBIAN_DATASETS = Path("/usr/share/datasets")


class CorruptDataError(DataNotFoundError):
    """A dataset file exists but is corrupt, truncated, or not in the expected format."""


def one_line(text: object) -> str:
    """Collapse a message onto one line (error messages must be one line)."""
    return " ".join(str(text).split())


def corrupt(path: object, reason: object) -> CorruptDataError:
    """Build the error for an unreadable dataset file (to be raised by the caller)."""
    return CorruptDataError(
        f"cannot read dataset file {path}: {one_line(reason)}; "
        "replace it with a fresh copy (or delete it so it is downloaded again)"
    )


def read_maybe_gzip(path: Path) -> bytes:
    """Read a file, transparently decompressing gzip; errors name the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise corrupt(path, exc.strerror or exc) from None
    if raw[:2] != b"\x1f\x8b":
        if path.suffix == ".gz":
            raise corrupt(path, "not a gzip file")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise corrupt(path, f"broken gzip data ({exc})") from None


def default_cache_dir() -> Path:
    """``~/.cache/itop``: the last generic search root and the download target."""
    return Path.home() / ".cache" / "itop"


def env_roots() -> list[Path]:
    """Folders listed in ``$ITOP_DATA`` (``os.pathsep``-separated)."""
    value = os.environ.get("ITOP_DATA", "")
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]
