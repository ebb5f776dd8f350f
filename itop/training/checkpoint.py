"""Checkpoints that survive crashes: atomic writes, safe loads, automatic fallback, RNG state.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then
renamed over its final name, so a crash never leaves a half-written file under a checkpoint's
name. Loading uses ``torch.load(weights_only=True)``: only tensors and plain containers are
accepted, never arbitrary pickled objects. ``resume="auto"`` takes the newest checkpoint that
loads and falls back to older ones if the newest is truncated or corrupt. :func:`rng_state` and
:func:`set_rng_state` capture every global random stream (torch, CUDA, numpy, Python) as
tensors, so an exact resume needs nothing but a weights-only load.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = [
    "checkpoint_path",
    "find_checkpoints",
    "load_checkpoint",
    "load_latest",
    "prune_checkpoints",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-step(\d+)\.pt$")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"ckpt-step{step:09d}.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; raise :class:`CheckpointError` with the fix if it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or use --resume auto")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global, ...
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}); resume from an earlier "
            "checkpoint or use --resume auto to pick the newest good one"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an itop checkpoint (expected a dict)")
    return state


def find_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in ``folder`` that loads, skipping corrupt ones (with a warning)."""
    for path in reversed(find_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as e:
            log.warning("%s; trying the previous checkpoint", e)
    return None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for path in find_checkpoints(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every global random stream as tensors (torch, CUDA when present, numpy, Python)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
