"""Downloading dataset files: urllib with a timeout, temp file + rename, checksum check.

Nothing here is called unless files are missing and the caller asked for a download.
Tests replace :func:`fetch_url` to simulate the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from itop.data.files import one_line

DEFAULT_TIMEOUT = 30.0


class DownloadError(OSError):
    """Every mirror failed for a file (message is one line)."""


def fetch_url(url: str, dest: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Stream ``url`` into the file ``dest`` (overwritten)."""
    request = urllib.request.Request(url, headers={"User-Agent": "itop-data"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    urls: Sequence[str],
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``dest`` from the first working mirror in ``urls`` and verify its checksum.

    The data is written to a hidden temporary file next to ``dest`` and renamed into place only
    once the checksum matches, so ``dest`` never exists half-written.

    Raises:
        DownloadError: every mirror failed (network error or checksum mismatch).
    """
    dest = Path(dest)
    problems: list[str] = []
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest.parent}: {one_line(exc)}") from None
    for url in urls:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            # Looked up on the module at call time so tests can replace it.
            fetch_url(url, tmp, timeout=timeout)
            for algorithm, expected in (("md5", md5), ("sha256", sha256)):
                if expected is not None:
                    actual = file_digest(tmp, algorithm)
                    if actual != expected.lower():
                        raise ValueError(
                            f"{algorithm} checksum mismatch (expected {expected}, got {actual})"
                        )
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException, ValueError) as exc:
            problems.append(f"{url}: {one_line(exc) or type(exc).__name__}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError("; ".join(problems) or f"no URL known for {dest.name}")
