"""MNIST and Fashion-MNIST from the four IDX files, parsed with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from itop.data.datasets import TensorImageDataset
from itop.data.download import download_file
from itop.data.files import DEBIAN_DATASETS, corrupt, read_maybe_gzip
from itop.data.registry import register_dataset
from itop.data.splits import DatasetSplits
from itop.data.transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def parse_idx(data: bytes, source: object = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) IDX file; the result is a read-only view of ``data``.

    Raises:
        CorruptDataError: bad magic number, unknown type code, or wrong size.
    """
    if len(data) < 4:
        raise corrupt(source, f"truncated IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise corrupt(source, f"bad IDX magic number 0x{data[:4].hex()}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(source, f"truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes in"
        raise corrupt(
            source, f"{what} IDX data: {len(data)} bytes, expected {expected} for shape {dims}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(folder: Path, filename: str, *, ndim: int) -> np.ndarray:
    """Read ``filename`` (``.gz``, or the same name without ``.gz``) from ``folder``."""
    path = folder / filename
    if not path.is_file() and (folder / filename.removesuffix(".gz")).is_file():
        path = folder / filename.removesuffix(".gz")
    array = parse_idx(read_maybe_gzip(path), path)
    if array.ndim != ndim or array.dtype != np.uint8:
        raise corrupt(path, f"expected {ndim}-D unsigned bytes, got {array.ndim}-D {array.dtype}")
    return array


def _files_present(folder: Path) -> bool:
    return all(
        (folder / f).is_file() or (folder / f.removesuffix(".gz")).is_file() for f in IDX_FILES
    )


def _locator(name: str, torchvision_folder: str):
    def locate(root: Path) -> Path | None:
        for folder in (root / name, root, root / torchvision_folder / "raw"):
            if _files_present(folder):
                return folder
        return None

    return locate


def _downloader(md5: dict[str, str], mirrors: tuple[str, ...]):
    def download(target: Path) -> None:
        for filename in IDX_FILES:
            if not (target / filename).is_file():
                download_file([m + filename for m in mirrors], target / filename, md5=md5[filename])

    return download


def _load_pair(folder: Path, prefix: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(folder, f"{prefix}-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(folder, f"{prefix}-labels-idx1-ubyte.gz", ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise corrupt(
            folder / f"{prefix}-labels-idx1-ubyte.gz",
            f"{labels.shape[0]} labels for {images.shape[0]} images",
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise corrupt(
            folder / f"{prefix}-labels-idx1-ubyte.gz",
            f"label {int(labels.max())} outside 0..{num_classes - 1}",
        )
    return images, labels


def _to_dataset(images, labels, mean, std, classes) -> TensorImageDataset:
    # One copy out of the read-only decompressed buffer, then normalised once to float32.
    data = TensorImageDataset(
        torch.from_numpy(np.array(images)).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        mean=mean,
        std=std,
        classes=classes,
    )
    return data.normalize_()


def build_idx_dataset(folder: Path, name: str, mean, std, classes) -> DatasetSplits:
    """Build splits (``val=None``) from the four IDX files in ``folder``."""
    train_x, train_y = _load_pair(folder, "train", len(classes))
    test_x, test_y = _load_pair(folder, "t10k", len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise corrupt(folder / IDX_FILES[2], "image size differs from the training images")
    height, width = train_x.shape[1:]
    return DatasetSplits(
        name=name,
        train=_to_dataset(train_x, train_y, mean, std, classes),
        val=None,
        test=_to_dataset(test_x, test_y, mean, std, classes),
        num_classes=len(classes),
        in_channels=1,
        image_size=height if height == width else max(height, width),
        mean=tuple(mean),
        std=tuple(std),
        classes=tuple(classes),
    )


_FILES_HINT = ", ".join(IDX_FILES)
_DIGIT_CLASSES = tuple(str(i) for i in range(10))


def _build_mnist(folder: Path) -> DatasetSplits:
    return build_idx_dataset(folder, "mnist", MNIST_MEAN, MNIST_STD, _DIGIT_CLASSES)


def _build_fashion_mnist(folder: Path) -> DatasetSplits:
    return build_idx_dataset(
        folder, "fashion-mnist", FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES
    )


register_dataset(
    "mnist",
    _build_mnist,
    description="MNIST handwritten digits: 60k/10k grey 28x28 images, 10 classes (IDX files)",
    locate=_locator("mnist", "MNIST"),
    files_hint=_FILES_HINT,
    download=_downloader(MNIST_MD5, MNIST_MIRRORS),
)
register_dataset(
    "fashion-mnist",
    _build_fashion_mnist,
    description="Fashion-MNIST clothing: 60k/10k grey 28x28 images, 10 classes (IDX files)",
    locate=_locator("fashion-mnist", "FashionMNIST"),
    files_hint=_FILES_HINT,
    download=_downloader(FASHION_MNIST_MD5, FASHION_MNIST_MIRRORS),
    extra_roots=(str(DEBIAN_DATASETS / "fashion-mnist"),),
    aliases=("fashion_mnist", "fashionmnist", "fmnist"),
)
