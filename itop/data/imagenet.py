"""ImageNet (or any ImageFolder tree): ``<root>/imagenet/{train,val}/<class>/<image>``.

Images are decoded lazily with Pillow in ``DataLoader`` workers (see
:class:`~itop.data.loader.WorkerBatchLoader`); only the file list is held in memory.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from itop.data.files import corrupt
from itop.data.registry import register_dataset
from itop.data.splits import DatasetSplits
from itop.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomResizedCropFlip,
    ResizeCenterCrop,
    normalization_affine,
    pil_to_uint8_chw,
)
from itop.errors import DataNotFoundError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def find_classes(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder``."""
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as exc:
        raise DataNotFoundError(f"cannot list {folder}: {exc.strerror or exc}") from None


def scan_images(folder: Path, class_to_index: dict[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``folder/<class>/``, sorted by class then name."""
    samples: list[tuple[str, int]] = []
    for name in find_classes(folder):
        if name not in class_to_index:
            raise DataNotFoundError(
                f"class folder {folder / name} has no counterpart in the training folder; "
                "the validation classes must be a subset of the training classes"
            )
        label = class_to_index[name]
        with os.scandir(folder / name) as entries:
            files = sorted(
                e.name
                for e in entries
                if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
        samples.extend((str(folder / name / f), label) for f in files)
    if not samples:
        raise DataNotFoundError(
            f"no images (*.JPEG, *.jpg, *.png) found under {folder}/<class>/; "
            "put one sub-folder of images per class there"
        )
    return samples


class ImageFolderDataset(Dataset):
    """Lazily decoded labelled images.

    ``load(index, seed)`` returns a uint8 ``(3, S, S)`` tensor and the label: augmented with
    ``random.Random(seed)`` when ``seed`` is not ``None`` and the dataset has an augmentation,
    otherwise with the evaluation transform. ``__getitem__`` returns the normalised,
    un-augmented sample.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        *,
        augment: RandomResizedCropFlip | None,
        eval_transform: ResizeCenterCrop,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source_indices: torch.Tensor | None = None,
    ) -> None:
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.augment = augment
        self.eval_transform = eval_transform
        self.mean, self.std = tuple(mean), tuple(std)
        self._mul, self._add = normalization_affine(self.mean, self.std, 255.0)
        if source_indices is None:
            source_indices = torch.arange(len(self.samples))
        self.source_indices = source_indices

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(n={len(self)}, classes={len(self.classes)}, "
            f"augment={self.augment!r}, eval={self.eval_transform!r})"
        )

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int, seed: int | None = None) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise corrupt(path, f"cannot decode image ({exc})") from None
        if seed is not None and self.augment is not None:
            image = self.augment(image, random.Random(seed))
        else:
            image = self.eval_transform(image)
        return pil_to_uint8_chw(image), label

    def normalize_batch(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> normalised float32."""
        return raw.to(torch.float32, copy=True).mul_(self._mul).add_(self._add)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw, label = self.load(index, None)
        return self.normalize_batch(raw[None])[0], torch.tensor(label, dtype=torch.int64)

    def subset(self, indices, *, augment: bool) -> ImageFolderDataset:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageFolderDataset(
            [self.samples[i] for i in index.tolist()],
            self.classes,
            augment=self.augment if augment else None,
            eval_transform=self.eval_transform,
            mean=self.mean,
            std=self.std,
            source_indices=self.source_indices[index],
        )

    def without_augmentation(self) -> ImageFolderDataset:
        return self.subset(torch.arange(len(self)), augment=False)


def _locate(root: Path) -> Path | None:
    for folder in (root / "imagenet", root):
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    return None


def build_image_folder(
    folder: Path,
    *,
    name: str = "imagenet",
    crop_size: int = 224,
    resize_size: int = 256,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> DatasetSplits:
    """Splits of ``folder/train`` (train) and ``folder/val`` (test), ``val=None``."""
    augment = RandomResizedCropFlip(crop_size, tuple(scale), tuple(ratio), flip)
    evaluate = ResizeCenterCrop(resize_size, crop_size)
    classes = find_classes(folder / "train")
    class_to_index = {c: i for i, c in enumerate(classes)}
    train = scan_images(folder / "train", class_to_index)
    test = scan_images(folder / "val", class_to_index)
    return DatasetSplits(
        name=name,
        train=ImageFolderDataset(
            train, classes, augment=augment, eval_transform=evaluate, mean=mean, std=std
        ),
        val=None,
        test=ImageFolderDataset(
            test, classes, augment=None, eval_transform=evaluate, mean=mean, std=std
        ),
        num_classes=len(classes),
        in_channels=3,
        image_size=crop_size,
        mean=tuple(mean),
        std=tuple(std),
        classes=tuple(classes),
    )


def _build_imagenet(
    folder: Path,
    crop_size: int = 224,
    resize_size: int = 256,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> DatasetSplits:
    return build_image_folder(
        folder,
        crop_size=crop_size,
        resize_size=resize_size,
        scale=scale,
        ratio=ratio,
        flip=flip,
    )


register_dataset(
    "imagenet",
    _build_imagenet,
    description=(
        "ImageNet ILSVRC-2012 (ImageFolder tree, decoded lazily): 1000 classes, "
        "RandomResizedCrop 224 + flip; the val folder is the test split"
    ),
    locate=_locate,
    files_hint="the folders train/<class>/*.JPEG and val/<class>/*.JPEG (optionally under imagenet/)",
)
