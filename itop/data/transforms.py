"""Image transforms: a batched crop+flip for in-memory tensors and PIL ImageNet transforms.

The batched transform draws its randomness from a ``torch.Generator`` that the loader seeds
from (seed, epoch, rank, batch index); the PIL transforms draw from a ``random.Random`` seeded
per sample. Either way the output is a pure function of those integers, which is what makes
mid-epoch resume exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from itop.errors import ConfigError

# Standard per-dataset channel statistics (on images scaled to [0, 1]).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# The values used by the ITOP / sparse-learning CIFAR code.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# sklearn digits (values 0..16 scaled by 1/16), computed over all 1797 images.
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)


def normalization_affine(
    mean: Sequence[float], std: Sequence[float], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mul, add)`` of shape ``(1, C, 1, 1)`` so that ``raw * mul + add`` normalises raw pixels.

    ``raw`` is in ``[0, scale]`` (255 for 8-bit images, 16 for sklearn digits).
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return 1.0 / (scale * std_t), -mean_t / std_t


class RandomCropFlip:
    """Zero-pad by ``padding``, take a random crop of the original size, random h-flip.

    This is the standard CIFAR augmentation (``padding=4``), applied to a whole batch at once
    with a single gather (no per-sample Python loop).

    Args:
        padding: Pixels of padding on each side (the crop offset is uniform in ``0..2*padding``).
        flip: Whether to flip each image horizontally with probability 1/2.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if int(padding) != padding or padding < 0:
            raise ConfigError(f"padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

    def __call__(
        self,
        batch: torch.Tensor,
        generator: torch.Generator,
        fill: torch.Tensor | float = 0,
    ) -> torch.Tensor:
        """Augment ``batch`` of shape ``(B, C, H, W)``; ``fill`` is the padding value
        (a scalar or one value per channel, in the batch's own units)."""
        b, c, h, w = batch.shape
        p = self.padding
        if b == 0:
            return batch
        hp, wp = h + 2 * p, w + 2 * p
        if p:
            padded = batch.new_empty((b, c, hp, wp))
            fill_t = torch.as_tensor(fill, dtype=batch.dtype).reshape(1, -1, 1, 1)
            padded.copy_(fill_t.expand_as(padded))
            padded[:, :, p : p + h, p : p + w] = batch
        else:
            padded = batch.contiguous()
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        cols = torch.arange(w).expand(b, w)
        if self.flip:
            flipped = torch.randint(0, 2, (b,), generator=generator).bool()
            cols = torch.where(flipped[:, None], (w - 1) - cols, cols)
        cols = cols + dx[:, None]
        # Rows: one index_select of whole padded rows; columns: one gather per row.
        planes = (torch.arange(b)[:, None, None] * c + torch.arange(c)[None, :, None]) * hp
        rows = planes + (dy[:, None] + torch.arange(h))[:, None, :]
        picked = padded.reshape(b * c * hp, wp).index_select(0, rows.reshape(-1))
        picked = picked.view(b, c, h, wp)
        return torch.gather(picked, 3, cols.view(b, 1, 1, w).expand(b, c, h, w))


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """ImageNet training augmentation on PIL images: RandomResizedCrop + horizontal flip.

    A crop covering a uniform fraction ``scale`` of the area with a log-uniform aspect ratio in
    ``ratio`` (10 attempts, then a centred crop) is resized to ``size x size`` (bilinear).
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __post_init__(self) -> None:
        _check_positive_int("crop_size", self.size)
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise ConfigError(f"ratio must satisfy 0 < low <= high, got {self.ratio!r}")

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """``(left, top, crop_width, crop_height)`` of the random crop."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= width and 0 < ch <= height:
                return rng.randint(0, width - cw), rng.randint(0, height - ch), cw, ch
        aspect = width / height
        if aspect < self.ratio[0]:
            cw, ch = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            cw, ch = int(round(height * self.ratio[1])), height
        else:
            cw, ch = width, height
        return (width - cw) // 2, (height - ch) // 2, cw, ch

    def __call__(self, image, rng: random.Random):
        from PIL import Image

        left, top, cw, ch = self.crop_box(image.width, image.height, rng)
        out = image.resize(
            (self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)
        )
        if self.flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


@dataclass(frozen=True)
class ResizeCenterCrop:
    """ImageNet evaluation transform: resize the shorter side to ``resize``, centre-crop ``crop``."""

    resize: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        _check_positive_int("resize_size", self.resize)
        _check_positive_int("crop_size", self.crop)
        if self.crop > self.resize:
            raise ConfigError(
                f"crop_size ({self.crop}) must not exceed resize_size ({self.resize})"
            )

    def __call__(self, image):
        from PIL import Image

        w, h = image.width, image.height
        if w <= h:
            nw, nh = self.resize, max(self.resize, int(self.resize * h / w))
        else:
            nw, nh = max(self.resize, int(self.resize * w / h)), self.resize
        left = int(round((nw - self.crop) / 2.0))
        top = int(round((nh - self.crop) / 2.0))
        # Resize only the region that survives the crop (same result, less work).
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return image.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=box)


def pil_to_uint8_chw(image) -> torch.Tensor:
    """An RGB PIL image as a contiguous uint8 tensor ``(3, H, W)``."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
