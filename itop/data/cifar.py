"""CIFAR-10 / CIFAR-100 from the python-pickle archives, unpickled with a whitelist.

Accepted layouts (under any search root): the extracted folder ``cifar-10-batches-py/`` /
``cifar-100-python/``, its files directly, or the original ``.tar.gz`` read in memory with
``tarfile`` (nothing is extracted to disk).
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itop.data.datasets import TensorImageDataset
from itop.data.download import download_file
from itop.data.files import CorruptDataError, corrupt, one_line
from itop.data.registry import register_dataset
from itop.data.splits import DatasetSplits
from itop.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    RandomCropFlip,
)

try:  # numpy >= 2 moved numpy.core to numpy._core (the old name warns)
    import numpy._core.multiarray  # noqa: F401

    _NUMPY_CORE = "numpy._core"
except ImportError:  # pragma: no cover - numpy 1.x
    _NUMPY_CORE = "numpy.core"

_BUILTIN_CONTAINERS = ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray")
_ALLOWED_GLOBALS = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {(f"{core}.multiarray", "_reconstruct") for core in ("numpy.core", "numpy._core")}
    | {(f"{core}.multiarray", "scalar") for core in ("numpy.core", "numpy._core")}
    | {(f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")}
    | {(mod, name) for mod in ("builtins", "__builtin__") for name in _BUILTIN_CONTAINERS}
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The pickle references something a CIFAR batch never contains."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ForbiddenGlobalError(f"forbidden global {module}.{name}")
        if module.startswith("numpy.core.") and _NUMPY_CORE != "numpy.core":
            module = _NUMPY_CORE + module[len("numpy.core") :]
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: object) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; failures name ``source``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobalError as exc:
        raise CorruptDataError(
            f"refusing to load {source}: {exc} (only numpy arrays and builtin containers are "
            "allowed in a CIFAR batch); replace it with a fresh copy"
        ) from None
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise corrupt(
            source, f"not a valid pickle ({type(exc).__name__}: {one_line(exc)})"
        ) from None


@dataclass(frozen=True)
class CifarLayout:
    """File names and keys of one CIFAR variant."""

    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    md5: str
    url: str

    @property
    def all_files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files

    def files_hint(self) -> str:
        return f"{self.archive} or the folder {self.folder}/ holding {', '.join(self.all_files)}"


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    md5="c58f30108f718f92721af3b95e74349a",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _locator(layout: CifarLayout):
    def locate(root: Path) -> Path | None:
        candidates = (root / layout.name / layout.folder, root / layout.name, root / layout.folder)
        for folder in (*candidates, root):
            if all((folder / f).is_file() for f in layout.all_files):
                return folder
            if (folder / layout.archive).is_file():
                return folder
        return None

    return locate


def _downloader(layout: CifarLayout):
    def download(target: Path) -> None:
        download_file([layout.url], target / layout.archive, md5=layout.md5)

    return download


def _read_archive(path: Path, layout: CifarLayout) -> dict[str, bytes]:
    """The wanted members of the ``.tar.gz`` in one sequential pass."""
    wanted = set(layout.all_files)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    stream = archive.extractfile(member)
                    if stream is not None:
                        found[base] = stream.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise corrupt(path, f"broken tar.gz archive ({one_line(exc)})") from None
    missing = [f for f in layout.all_files if f not in found]
    if missing:
        raise corrupt(path, f"archive lacks {layout.folder}/{', '.join(missing)}")
    return found


def _parse_batch(raw: bytes, source: str, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(raw, source)
    if not isinstance(batch, dict):
        raise corrupt(source, f"expected a dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or layout.label_key not in batch:
        raise corrupt(source, f"missing key 'data' or '{layout.label_key}'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise corrupt(source, "'data' is not a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise corrupt(source, f"'data' rows have {data.shape[1]} values, expected 3072")
    try:
        labels = np.asarray(batch[layout.label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise corrupt(source, f"bad '{layout.label_key}' ({one_line(exc)})") from None
    if labels.shape[0] != data.shape[0]:
        raise corrupt(source, f"{labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise corrupt(source, f"labels outside 0..{layout.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _build(folder: Path, layout: CifarLayout, mean, std, classes, padding: int, flip: bool):
    if all((folder / f).is_file() for f in layout.all_files):
        raws = {}
        for f in layout.all_files:
            try:
                raws[f] = (folder / f).read_bytes()
            except OSError as exc:
                raise corrupt(folder / f, exc.strerror or exc) from None
        sources = {f: str(folder / f) for f in layout.all_files}
    else:
        archive = folder / layout.archive
        raws = _read_archive(archive, layout)
        sources = {f: f"{archive}:{layout.folder}/{f}" for f in layout.all_files}

    def stack(files: tuple[str, ...], augment) -> TensorImageDataset:
        parts = [_parse_batch(raws.pop(f), sources[f], layout) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return TensorImageDataset(
            torch.from_numpy(images),  # uint8, normalised per batch
            torch.from_numpy(labels),
            mean=mean,
            std=std,
            augment=augment,
            classes=classes,
        )

    augment = RandomCropFlip(padding=padding, flip=flip)
    return DatasetSplits(
        name=layout.name,
        train=stack(layout.train_files, augment),
        val=None,
        test=stack(layout.test_files, None),
        num_classes=layout.num_classes,
        in_channels=3,
        image_size=32,
        mean=tuple(mean),
        std=tuple(std),
        classes=tuple(classes),
    )


def _build_cifar10(folder: Path, padding: int = 4, flip: bool = True) -> DatasetSplits:
    return _build(folder, CIFAR10, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES, padding, flip)


def _build_cifar100(folder: Path, padding: int = 4, flip: bool = True) -> DatasetSplits:
    classes = tuple(str(i) for i in range(100))
    return _build(folder, CIFAR100, CIFAR100_MEAN, CIFAR100_STD, classes, padding, flip)


register_dataset(
    "cifar10",
    _build_cifar10,
    description="CIFAR-10: 50k/10k colour 32x32 images, 10 classes; pad-4 crop + flip",
    locate=_locator(CIFAR10),
    files_hint=CIFAR10.files_hint(),
    download=_downloader(CIFAR10),
    aliases=("cifar-10", "cifar_10"),
)
register_dataset(
    "cifar100",
    _build_cifar100,
    description="CIFAR-100: 50k/10k colour 32x32 images, 100 fine classes; pad-4 crop + flip",
    locate=_locator(CIFAR100),
    files_hint=CIFAR100.files_hint(),
    download=_downloader(CIFAR100),
    aliases=("cifar-100", "cifar_100"),
)
