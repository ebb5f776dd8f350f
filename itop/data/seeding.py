"""Deterministic seed mixing and hash-based orderings.

Everything random in :mod:`itop.data` is a pure function of a few integers (run seed, epoch,
rank, batch index, ...). These helpers turn such tuples into well-spread 63-bit seeds and into
orderings that do not depend on the torch or numpy random-number implementations, so that
dataset splits stay identical across library versions.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_START = 0x3C6EF372FE94F82B


def _splitmix64(value: int) -> int:
    """One round of the SplitMix64 finaliser on a Python int (mod 2**64)."""
    z = (value + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def mix_seed(*values: int) -> int:
    """Combine integers into one seed in ``[0, 2**63)``.

    The result depends on every value and on their order; negative values are allowed.
    It is suitable for ``torch.Generator.manual_seed`` and ``random.Random``.
    """
    state = _START
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state & _MASK63


def hash_array(seed: int, values: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 of ``values`` (non-negative ints) keyed by ``seed``; uint64 out."""
    key = np.uint64(mix_seed(seed))
    with np.errstate(over="ignore"):
        z = np.asarray(values).astype(np.uint64) ^ key
        z = z + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MUL1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MUL2)
        z = z ^ (z >> np.uint64(31))
    return z


def hash_seeds(seed: int, start: int, stop: int) -> list[int]:
    """Per-item seeds in ``[0, 2**63)`` for the positions ``start..stop-1`` under ``seed``."""
    hashed = hash_array(seed, np.arange(start, stop, dtype=np.uint64))
    return (hashed & np.uint64(_MASK63)).astype(np.int64).tolist()


def hash_order(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` (int64) that depends only on ``n`` and ``seed``."""
    keys = hash_array(seed, np.arange(n, dtype=np.uint64))
    return np.argsort(keys, kind="stable").astype(np.int64)


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out), holding out ``fraction`` of every class.

    Per class, ``round(fraction * count)`` items are held out, chosen by :func:`hash_order`
    keyed by ``(seed, class)``. Both returned index arrays are sorted (int64).
    """
    labels = np.asarray(labels)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(round(fraction * len(members)))
        order = hash_order(len(members), mix_seed(seed, int(cls)))
        held.append(members[order[:count]])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask).astype(np.int64), held_out.astype(np.int64)
