"""scikit-learn's bundled 8x8 digits: the always-available default dataset."""

from __future__ import annotations

import numpy as np
import torch

from itop.data.datasets import TensorImageDataset
from itop.data.registry import register_dataset
from itop.data.seeding import stratified_holdout
from itop.data.splits import DatasetSplits
from itop.data.transforms import DIGITS_MEAN, DIGITS_STD
from itop.errors import ConfigError

# Fixed seed of the digits train/test split (digits has no official test set). It never
# depends on the run seed.
DIGITS_TEST_SEED = 0xD161_7500
DIGITS_TEST_FRACTION = 0.2


def _build_digits(folder: None = None) -> DatasetSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - sklearn is a test dependency
        raise ConfigError(
            "the 'digits' dataset needs scikit-learn; install it with pip install 'itop[data]'"
        ) from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_index, test_index = stratified_holdout(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    classes = tuple(str(i) for i in range(10))

    def part(index: np.ndarray) -> TensorImageDataset:
        data = TensorImageDataset(
            torch.from_numpy(images[index]).unsqueeze(1),
            torch.from_numpy(labels[index]),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            scale=16.0,
            classes=classes,
        )
        return data.normalize_()

    return DatasetSplits(
        name="digits",
        train=part(train_index),
        val=None,
        test=part(test_index),
        num_classes=10,
        in_channels=1,
        image_size=8,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        classes=classes,
    )


register_dataset(
    "digits",
    _build_digits,
    description=(
        "scikit-learn digits: 1797 grey 8x8 images, 10 classes, bundled (no files needed); "
        "fixed stratified 20% test split"
    ),
)
