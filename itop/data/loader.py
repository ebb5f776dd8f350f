"""Deterministic, resumable, shardable batch loaders.

The order of an epoch is a pure function of ``(seed, epoch)``: a ``torch.Generator`` seeded
from both draws the permutation, which is padded to a multiple of ``world_size`` and dealt out
like ``DistributedSampler`` (rank ``r`` takes ``perm[r::world_size]``). Augmentation randomness
is likewise a pure function of ``(seed, epoch, rank, batch index)`` (or of the sample's
position, for the worker-based loader). Hence ``set_epoch(e)`` followed by ``iter_from(k)``
yields exactly batches ``k, k+1, ...`` of an uninterrupted epoch ``e``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import default_collate as _default_collate

from itop.data.seeding import hash_seeds, mix_seed
from itop.errors import ConfigError

_AUGMENT_SALT = 0x61756720  # keeps augmentation streams apart from the shuffle stream
_SAMPLE_SALT = 0x73616D70


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def epoch_indices(
    n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The sample indices rank ``rank`` visits in ``epoch`` (int64, in order).

    The full order is ``randperm(n)`` from a generator seeded with ``mix_seed(seed, epoch)``
    (or ``arange(n)`` without shuffling), padded by repeating its head up to a multiple of
    ``world_size``; this rank takes every ``world_size``-th element starting at ``rank``.
    """
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(mix_seed(seed, epoch))
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
    return order[rank::world_size]


class BatchLoader:
    """Batches of an in-memory dataset, gathered by index slicing.

    Works with any dataset that has ``get_batch(index, generator)`` and ``__len__`` (such as
    :class:`~itop.data.datasets.TensorImageDataset`).

    Args:
        dataset: The dataset.
        batch_size: Samples per batch.
        shuffle: Shuffle every epoch (deterministically from ``seed`` and the epoch).
        seed: Run seed.
        rank, world_size: This process's shard (``0 <= rank < world_size``).
        drop_last: Drop this rank's final partial batch.
        augment: Apply the dataset's augmentation (if it has one).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        augment: bool = True,
    ) -> None:
        self.dataset = dataset
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be < world_size ({world_size}), got {rank}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = bool(augment) and getattr(dataset, "augment", None) is not None
        self.epoch = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"batches={len(self)}, shuffle={self.shuffle}, augment={self.augment}, "
            f"seed={self.seed}, epoch={self.epoch}, rank={self.rank}/{self.world_size})"
        )

    # -- epoch bookkeeping ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentation) the next iteration produces."""
        self.epoch = _check_int("epoch", epoch, 0)

    @property
    def num_samples(self) -> int:
        """Samples this rank visits per epoch (including padding duplicates)."""
        n = len(self.dataset)
        return math.ceil(n / self.world_size) if n else 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on every rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample order for ``epoch`` (default: the current epoch)."""
        return epoch_indices(
            len(self.dataset),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            rank=self.rank,
            world_size=self.world_size,
        )

    def batch_indices(self, epoch: int | None = None) -> list[torch.Tensor]:
        """The index tensor of every batch this rank sees in ``epoch``."""
        order = self.indices(epoch)
        return [order[k * self.batch_size : (k + 1) * self.batch_size] for k in range(len(self))]

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch starting at batch ``batch_index`` (0 <= it <= len)."""
        start = _check_int("batch_index", batch_index, 0)
        if start > len(self):
            raise ConfigError(
                f"batch_index {batch_index} is past the end of the epoch ({len(self)} batches)"
            )
        return self._generate(start)

    def _augment_generator(self, batch: int) -> torch.Generator | None:
        if not self.augment:
            return None
        generator = torch.Generator()
        generator.manual_seed(mix_seed(self.seed, self.epoch, self.rank, batch, _AUGMENT_SALT))
        return generator

    def _generate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        bs = self.batch_size
        for batch in range(start, len(self)):
            index = order[batch * bs : (batch + 1) * bs]
            yield self.dataset.get_batch(index, self._augment_generator(batch))


class _SeededItems(Dataset):
    """Adapter fed ``(index, seed)`` pairs by the worker loader's batch sampler."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int | None]) -> Any:
        index, seed = item
        load = getattr(self.dataset, "load", None)
        if load is not None:
            return load(index, seed)
        return self.dataset[index]


def _collate(items: list[Any]) -> Any:
    return _default_collate(items)


class WorkerBatchLoader(BatchLoader):
    """A :class:`BatchLoader` that decodes samples in ``torch.utils.data.DataLoader`` workers.

    For lazily loaded datasets (ImageNet folders) and any other map-style dataset. A dataset
    with ``load(index, seed)`` gets a per-sample seed derived from (seed, epoch, rank, position)
    -- ``None`` when not augmenting -- so augmentation does not depend on which worker decodes
    which sample; its ``normalize_batch`` (if any) is applied to each collated batch in the
    calling process. Other datasets are simply indexed with ``dataset[i]``.

    Extra args:
        num_workers: DataLoader worker processes (0: decode in this process).
        pin_memory: Pin batches for faster host-to-GPU copies.
        prefetch_factor: Batches prefetched per worker (DataLoader default when ``None``).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size, **kwargs)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.pin_memory = bool(pin_memory)
        self.prefetch_factor = prefetch_factor

    def _generate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().tolist()
        bs = self.batch_size
        first, stop = start * bs, min(len(self) * bs, len(order))
        if self.augment:
            base = mix_seed(self.seed, self.epoch, self.rank, _SAMPLE_SALT)
            seeds: list[int | None] = list(hash_seeds(base, first, stop))
        else:
            seeds = [None] * (stop - first)
        pairs = list(zip(order[first:stop], seeds, strict=True))
        batches = [pairs[k : k + bs] for k in range(0, len(pairs), bs)]
        if not batches:
            return
        extra: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            extra["prefetch_factor"] = self.prefetch_factor
        loader = DataLoader(
            _SeededItems(self.dataset),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            **extra,
        )
        normalize = getattr(self.dataset, "normalize_batch", None)
        for x, y in loader:
            if normalize is not None:
                x = normalize(x)
            yield x, torch.as_tensor(y, dtype=torch.int64)


def make_loader(
    dataset: Dataset,
    batch_size: int = 128,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    **kwargs: Any,
) -> BatchLoader:
    """The right loader for ``dataset``: :class:`BatchLoader` for in-memory datasets (worker
    options are ignored there: slicing is already fast), :class:`WorkerBatchLoader` otherwise."""
    if hasattr(dataset, "get_batch"):
        _check_int("num_workers", num_workers, 0)
        return BatchLoader(dataset, batch_size, **kwargs)
    return WorkerBatchLoader(
        dataset,
        batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        **kwargs,
    )
