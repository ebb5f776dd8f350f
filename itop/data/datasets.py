"""In-memory image datasets batched by index slicing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from itop.errors import ConfigError

BatchAugment = Callable[..., torch.Tensor]


class TensorImageDataset(Dataset):
    """Images and labels held as tensors; batches are gathered with one index operation.

    Images are stored either raw (uint8, or any dtype in ``[0, scale]``) and normalised per
    batch, or already normalised float32 (``normalized=True``; see :meth:`normalize_`).

    Args:
        images: ``(N, C, H, W)`` tensor.
        labels: ``(N,)`` integer tensor.
        mean, std: Per-channel statistics of images scaled to ``[0, 1]``.
        scale: The raw value that means "full intensity" (255 for 8-bit, 16 for digits).
        normalized: ``images`` are already normalised.
        augment: Batched augmentation ``augment(batch, generator, fill=...)`` applied by
            training loaders (``None``: no augmentation). It sees raw (un-normalised) pixels
            when the storage is raw.
        classes: Class names, if known.
        source_indices: For a subset, the positions of its items in the original split.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 255.0,
        normalized: bool = False,
        augment: BatchAugment | None = None,
        classes: Sequence[str] | None = None,
        source_indices: torch.Tensor | None = None,
    ) -> None:
        if images.dim() != 4:
            raise ConfigError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ConfigError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ConfigError(f"mean/std need {images.shape[1]} values (one per channel)")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.scale = float(scale)
        self.normalized = bool(normalized)
        self.augment = augment
        self.classes = tuple(classes) if classes is not None else None
        if source_indices is None:
            source_indices = torch.arange(images.shape[0])
        self.source_indices = source_indices
        from itop.data.transforms import normalization_affine

        self._mul, self._add = normalization_affine(self.mean, self.std, self.scale)

    # -- basic protocol ------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One normalised, un-augmented sample ``(x (C,H,W) float32, y int64 scalar)``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of size {n}")
        x, y = self.get_batch(torch.tensor([index % n]))
        return x[0], y[0]

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"TensorImageDataset(n={len(self)}, shape=({c}, {h}, {w}), "
            f"dtype={self.images.dtype}, augment={self.augment!r})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if len(self) else 0

    # -- batching ------------------------------------------------------------------------
    def normalize_batch(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw pixels ``(B, C, H, W)`` -> normalised float32 (a new tensor)."""
        return raw.to(torch.float32, copy=True).mul_(self._mul).add_(self._add)

    def get_batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at ``index`` (1-D int64), augmented when ``generator`` is given."""
        index = torch.as_tensor(index, dtype=torch.int64)
        x = self.images.index_select(0, index)
        y = self.labels.index_select(0, index)
        if generator is not None and self.augment is not None:
            x = self.augment(x, generator, fill=self._fill_value())
        if not self.normalized:
            x = self.normalize_batch(x)
        elif x.dtype != torch.float32:
            x = x.to(torch.float32)
        return x, y

    def _fill_value(self) -> torch.Tensor | float:
        """The storage value of a black pixel (what zero padding means)."""
        if self.normalized:
            return self._add.reshape(-1)
        return 0

    # -- derived datasets ----------------------------------------------------------------
    def normalize_(self) -> TensorImageDataset:
        """Convert the storage to normalised float32 once (in place); returns ``self``."""
        if not self.normalized:
            self.images = self.normalize_batch(self.images)
            self.normalized = True
        return self

    def subset(self, indices: torch.Tensor | Sequence[int], *, augment: bool) -> TensorImageDataset:
        """A new dataset holding copies of the items at ``indices``.

        ``augment=False`` drops the augmentation (validation subsets); ``True`` keeps it.
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(
            self.images.index_select(0, index),
            self.labels.index_select(0, index),
            mean=self.mean,
            std=self.std,
            scale=self.scale,
            normalized=self.normalized,
            augment=self.augment if augment else None,
            classes=self.classes,
            source_indices=self.source_indices[index],
        )

    def without_augmentation(self) -> TensorImageDataset:
        """A view of the same storage with augmentation disabled."""
        clone = TensorImageDataset.__new__(TensorImageDataset)
        clone.__dict__.update(self.__dict__)
        clone.augment = None
        return clone
