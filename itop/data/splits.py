"""The result of :func:`itop.data.load_dataset`: train/val/test datasets plus metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from itop.data.loader import BatchLoader, make_loader
from itop.data.seeding import hash_order
from itop.errors import ConfigError

SPLITS = ("train", "val", "test")
# Fixed seed of the train/validation split: it never depends on the run seed, so every run of a
# study validates on the same images.
VAL_SPLIT_SEED = 0x17D0_5EED


@dataclass
class DatasetSplits:
    """Train / validation / test datasets of one dataset, plus what a model needs to know.

    Attributes:
        name: Registry name of the dataset.
        train: Training set (its loaders apply the dataset's augmentation).
        val: Validation set carved from the official training set, or ``None``.
        test: Official test set (ImageNet: the validation folder).
        num_classes, in_channels, image_size: Model input/output geometry (``in_channels``
            and ``image_size`` are 0 for a dataset that is not of images).
        mean, std: Per-channel normalisation applied to every batch.
        classes: Class names, if known (a text dataset: its vocabulary).
        vocab_size, block_size: For a text dataset, the number of tokens and the context
            length; 0 otherwise.
        task: What a model predicts from it, a name in ``itop.training.tasks.TASKS``
            (``"classification"``; ``"language-model"`` for next-token targets).
    """

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int = 0
    image_size: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] | None = None
    vocab_size: int = 0
    block_size: int = 0
    task: str = "classification"

    def model_shape(self) -> dict[str, int]:
        """The shape arguments a model factory may take from this dataset
        (``build_model(name, **splits.model_shape())``): ``num_classes`` and, where set,
        ``in_channels``/``image_size`` (images) or ``vocab_size``/``block_size`` (text)."""
        values = {"num_classes": self.num_classes, "in_channels": self.in_channels,
                  "image_size": self.image_size, "vocab_size": self.vocab_size,
                  "block_size": self.block_size}
        return {k: int(v) for k, v in values.items() if k == "num_classes" or v}

    def __repr__(self) -> str:
        val = len(self.val) if self.val is not None else None
        return (
            f"DatasetSplits(name={self.name!r}, train={len(self.train)}, val={val}, "
            f"test={len(self.test)}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels}, image_size={self.image_size})"
        )

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        data = getattr(self, split)
        if data is None:
            raise ConfigError(
                f"{self.name} has no '{split}' split (it was loaded with val_fraction=0)"
            )
        return data

    def sizes(self) -> dict[str, int]:
        """Number of samples per split (absent splits omitted)."""
        return {s: len(getattr(self, s)) for s in SPLITS if getattr(self, s) is not None}

    def loader(
        self,
        split: str = "train",
        batch_size: int = 128,
        shuffle: bool | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        **options: Any,
    ) -> BatchLoader:
        """A deterministic loader over ``split``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``. Only ``"train"`` is augmented.
            batch_size: Samples per batch.
            shuffle: Defaults to ``True`` for train, ``False`` otherwise.
            seed: Run seed; the order of epoch ``e`` depends only on ``(seed, e)``.
            rank, world_size: Distributed shard of this process.
            drop_last: Drop the final partial batch.
            **options: ``num_workers``, ``pin_memory``, ``prefetch_factor`` (used by the
                worker-based loader of lazily decoded datasets, ignored by in-memory ones).
        """
        data = self.dataset(split)
        unknown = set(options) - {"num_workers", "pin_memory", "prefetch_factor"}
        if unknown:
            raise ConfigError(
                f"unknown loader option(s) {', '.join(sorted(unknown))}; "
                "known: num_workers, pin_memory, prefetch_factor"
            )
        return make_loader(
            data,
            batch_size,
            shuffle=(split == "train") if shuffle is None else shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            augment=split == "train",
            **options,
        )


def check_val_fraction(val_fraction: object) -> float:
    """Validate ``val_fraction`` (a number in ``[0, 1)``)."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    value = float(val_fraction)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    return value


def split_validation(splits: DatasetSplits, val_fraction: float) -> DatasetSplits:
    """Carve ``round(val_fraction * len(train))`` samples out of ``splits.train`` as ``val``.

    The held-out positions are chosen by a hash of the sample position under the fixed
    :data:`VAL_SPLIT_SEED`, so they are the same for every run. The validation set is never
    augmented.
    """
    fraction = check_val_fraction(val_fraction)
    full = splits.train
    if fraction == 0.0:
        splits.val = None
        return splits
    n = len(full)
    if n < 2:
        raise ConfigError(
            f"{splits.name} has {n} training sample(s): too few for a validation split; "
            "use val_fraction=0"
        )
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    order = hash_order(n, VAL_SPLIT_SEED)
    val_index = torch.from_numpy(order[:n_val]).sort().values
    train_index = torch.from_numpy(order[n_val:]).sort().values
    if hasattr(full, "subset"):
        splits.train = full.subset(train_index, augment=True)
        splits.val = full.subset(val_index, augment=False)
    else:
        splits.train = Subset(full, train_index.tolist())
        splits.val = Subset(full, val_index.tolist())
    return splits
