"""Checkpoints that survive crashes and say when they are damaged.

* **Atomic writes.** A checkpoint is written to a temporary file in the same folder
  (``.<name>.<random>.tmp``), flushed and fsync'ed, then renamed over its final name, so a
  crash never leaves a half-written file under a checkpoint's name. A failed write (a full disk)
  removes its temporary file and leaves the previous files as they were; temporaries left by a
  process killed mid-write are removed by :func:`remove_stale_temporaries` (the trainer calls it
  when a run starts) and after every successful write.
* **Checksums.** Every file carries a SHA-256 digest of each of its top-level entries
  (``model``, ``optimizer``, ``sparsifier``, ...: the bytes of every tensor and every other value,
  in order), computed from memory before writing and verified after loading. A flipped bit that
  still unpickles fine is then reported as corrupt (naming the entry) instead of silently
  resuming with different weights, and ``resume="auto"`` falls back past it exactly as past a
  truncated file. The cost is one extra pass over the bytes at save and at load (see
  ``benchmarks/bench_checkpoint.py``).
* **Safe loads.** ``torch.load(weights_only=True)``: only tensors and plain containers are
  accepted, never arbitrary pickled objects.
* **RNG state.** :func:`rng_state` and :func:`set_rng_state` capture every global random stream
  (torch, CUDA, numpy, Python) as tensors, so an exact resume needs nothing but a weights-only
  load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = [
    "CHECKSUM_ALGORITHM",
    "checkpoint_path",
    "find_checkpoints",
    "load_checkpoint",
    "load_latest",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "state_digests",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-step(\d+)\.pt$")
# What save_checkpoint's mkstemp leaves behind when the process dies mid-write.
_TEMPORARY = re.compile(r"^\..+\.pt\.[A-Za-z0-9_]+\.tmp$")

#: The digest of checkpoint entries (hashlib name). SHA-NI makes it about as fast as CRC32.
CHECKSUM_ALGORITHM = "sha256"
_CHECKSUM_KEY = "checksum"
_PARALLEL_BYTES = 1 << 20  # tensors at least this big are hashed on worker threads
_MAX_WORKERS = 8

# What a caller's error says to do when it has no better advice.
_DEFAULT_FIX = "pass another checkpoint"


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"ckpt-step{step:09d}.pt"


# -- checksums -------------------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> Any:
    """The tensor's values as a flat byte buffer (no copy for a contiguous CPU tensor)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_quantized:
        t = t.int_repr()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors of a nested value, in the order :func:`_feed` meets them."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensors(k)
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _tensor_digest(t: torch.Tensor, algorithm: str) -> bytes:
    return b"" if t.device.type == "meta" else hashlib.new(algorithm, _tensor_bytes(t)).digest()


def _feed(h: Any, value: Any, algorithm: str, known: Mapping[int, bytes]) -> None:
    """Hash ``value`` canonically: type tags, lengths and contents in container order; a tensor
    contributes its dtype, shape and the digest of its bytes (from ``known`` when precomputed)."""
    if isinstance(value, torch.Tensor):
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest = known.get(id(value))
        h.update(digest if digest is not None else _tensor_digest(value, algorithm))
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)}".encode())
        for k, v in value.items():
            _feed(h, k, algorithm, known)
            _feed(h, v, algorithm, known)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
        for v in value:
            _feed(h, v, algorithm, known)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)}:".encode())
        h.update(data)
    elif isinstance(value, bytes):
        h.update(f"B{len(value)}:".encode())
        h.update(value)
    else:  # None, bool, int, float (repr round-trips exactly), dtype, device, ...
        h.update(f"V{type(value).__name__}:{value!r};".encode())


def _workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))


def state_digests(state: Mapping[str, Any], algorithm: str = CHECKSUM_ALGORITHM) -> dict[str, str]:
    """Hex digest of each top-level entry of a checkpoint (the checksum entry itself excluded).

    The bytes of every tensor are read once; tensors of a megabyte or more are hashed on a few
    threads at once (hashlib releases the GIL), so a big checkpoint costs one pass over its bytes
    divided among the cores.
    """
    entries = {k: v for k, v in state.items() if k != _CHECKSUM_KEY}
    big = {id(t): t for v in entries.values() for t in _tensors(v)
           if t.numel() * t.element_size() >= _PARALLEL_BYTES}
    workers = min(_workers(), len(big))
    known: dict[int, bytes] = {}
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            known = dict(zip(big, pool.map(lambda t: _tensor_digest(t, algorithm), big.values()), strict=True))
    out = {}
    for key, value in entries.items():
        h = hashlib.new(algorithm)
        _feed(h, value, algorithm, known)
        out[str(key)] = h.hexdigest()
    return out


def _verify(state: dict[str, Any], path: Path, fix: str) -> None:
    checksum = state.pop(_CHECKSUM_KEY, None)
    if checksum is None:
        log.warning("checkpoint %s has no checksum (written before checksums existed): it cannot be "
                    "verified", path)
        return
    try:
        algorithm, expected = checksum["algorithm"], dict(checksum["entries"])
        actual = state_digests(state, algorithm)
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path} is corrupt (its checksum record is damaged); {fix}") from None
    bad = sorted(set(expected) ^ set(actual) | {k for k in expected.keys() & actual.keys()
                                                  if expected[k] != actual[k]})
    if bad:
        raise CheckpointError(
            f"checkpoint {path} is corrupt (checksum mismatch in {', '.join(repr(k) for k in bad)}: its "
            f"bytes changed after it was written); {fix}"
        )


# -- writing ---------------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` and its checksum to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        CheckpointError: The file could not be written (full disk, read-only folder). The
            temporary file is removed and whatever ``path`` held before is left as it was.
    """
    path = Path(path)
    payload = {**state, _CHECKSUM_KEY: {"algorithm": CHECKSUM_ALGORITHM, "entries": state_digests(state)}}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = _write_failure(e)
        if reason is None:
            raise
        raise CheckpointError(
            f"could not write {path}: {reason}; the files written before are intact: free disk space "
            "(or choose another --out-dir) and continue with --resume auto"
        ) from None
    except BaseException:
        if tmp is not None:
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
    remove_stale_temporaries(path.parent)
    return path


def _write_failure(error: BaseException) -> str | None:
    """The file-system reason a write failed (``None``: not a file-system failure).

    ``torch.save`` reports a failed write as the ``OSError``, or as a ``RuntimeError`` of its zip
    writer raised while it cleans up after that ``OSError``; the reason is the ``OSError``.
    """
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    if "PytorchStreamWriter" in text or "file write failed" in text:
        return _first_sentence(text)
    return None


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (``.<name>.pt.*.tmp``).

    Only this module writes such files, and a run's checkpoints are written by one process,
    one at a time, so any found outside a write are left by a process killed mid-write.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        if _TEMPORARY.match(p.name) and p.is_file():
            try:
                p.unlink()
            except OSError:
                continue
            removed.append(p)
    if removed:
        log.info("removed %d unfinished checkpoint write(s) in %s", len(removed), folder)
    return removed


# -- reading ---------------------------------------------------------------------------------------


def _first_sentence(text: str, limit: int = 100) -> str:
    """The first sentence of an exception message, cut at a word boundary."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence


def _load_failure(path: Path, error: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in words (the part after "checkpoint PATH ")."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        return f"is not a PyTorch checkpoint (it starts with {head!r})"
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "Weights only load failed" in message:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if found:
            return (f"holds a pickled {found.group(1)} object, which a safe weights-only load refuses "
                    "(unpickling it could run code); itop checkpoints hold only tensors and plain values")
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", message)
        return f"is truncated or corrupt ({_first_sentence(detail.group(1)) if detail else 'malformed pickle data'})"
    if isinstance(error, (EOFError, pickle.UnpicklingError)) and not message:
        return "is truncated or corrupt (it ends too early)"
    return f"is truncated or corrupt ({_first_sentence(message) or type(error).__name__})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    fix: str = _DEFAULT_FIX) -> dict[str, Any]:
    """Load a checkpoint safely and verify its checksum.

    Args:
        path: The file.
        map_location: Where its tensors go.
        fix: What the error message tells the user to do (the caller knows: ``itop eval`` and a
            resume need different advice).

    Raises:
        CheckpointError: One line saying what is wrong with the file (missing, a folder, empty,
            truncated, not a checkpoint, unsafe, checksum mismatch) and ``fix``.
    """
    path = Path(path)
    if path.is_dir():
        inside = [p for p in (path / "best.pt", *find_checkpoints(path / "checkpoints")[-1:],
                              *find_checkpoints(path)[-1:]) if p.is_file()]
        hint = f" (e.g. {' or '.join(str(p) for p in inside[:2])})" if inside else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: pass a checkpoint file{hint}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path, or {fix}")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror}); {fix}") from None
    if empty:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {fix}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed global, ...
        raise CheckpointError(f"checkpoint {path} {_load_failure(path, e)}; {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an itop checkpoint (it holds a {type(state).__name__}, "
                              f"not a dict); {fix}")
    _verify(state, path, fix)
    return state


def find_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(folder: str | Path, map_location: str | torch.device = "cpu", *,
                failures: list[CheckpointError] | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``folder`` that loads and verifies, skipping damaged ones.

    Args:
        folder: The run's ``checkpoints/`` folder.
        map_location: Where tensors go.
        failures: If given, the error of every checkpoint skipped is appended (newest first).

    Returns:
        ``(path, state)``, or ``None`` when no checkpoint is usable (or there is none).
    """
    for path in reversed(find_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location, fix="trying the previous checkpoint")
        except CheckpointError as e:
            log.warning("%s", e)
            if failures is not None:
                failures.append(e)
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
