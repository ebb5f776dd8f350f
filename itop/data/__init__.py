"""Datasets, deterministic resumable loaders and batching for itop.

>>> from itop.data import load_dataset
>>> splits = load_dataset("digits")
>>> loader = splits.loader("train", batch_size=64, seed=0)
>>> loader.set_epoch(0)
>>> x, y = next(iter(loader))

Built-in datasets: ``digits`` (bundled with scikit-learn, always available), ``mnist``,
``fashion-mnist``, ``cifar10``, ``cifar100`` (held in memory, batched by slicing),
``imagenet`` (ImageFolder tree, decoded lazily in DataLoader workers) and ``text`` (a local
UTF-8 file as character-level language modelling, ``data_file=`` option). See
:func:`resolve_data_dir` for where files are looked for.
"""

from itop.data import cifar as _cifar  # noqa: F401  (registers cifar10, cifar100)
from itop.data import digits as _digits  # noqa: F401  (registers digits)
from itop.data import idx as _idx  # noqa: F401  (registers mnist, fashion-mnist)
from itop.data import imagenet as _imagenet  # noqa: F401  (registers imagenet)
from itop.data import text as _text  # noqa: F401  (registers text)
from itop.data.datasets import TensorImageDataset
from itop.data.files import CorruptDataError, default_cache_dir
from itop.data.imagenet import ImageFolderDataset
from itop.data.loader import BatchLoader, WorkerBatchLoader, epoch_indices, make_loader
from itop.data.registry import (
    DatasetSpec,
    dataset_descriptions,
    get_dataset_spec,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_dir,
    search_roots,
)
from itop.data.splits import VAL_SPLIT_SEED, DatasetSplits
from itop.data.text import TextDataset
from itop.data.transforms import RandomCropFlip, RandomResizedCropFlip, ResizeCenterCrop

__all__ = [
    "VAL_SPLIT_SEED",
    "BatchLoader",
    "CorruptDataError",
    "DatasetSpec",
    "DatasetSplits",
    "ImageFolderDataset",
    "RandomCropFlip",
    "RandomResizedCropFlip",
    "ResizeCenterCrop",
    "TensorImageDataset",
    "TextDataset",
    "WorkerBatchLoader",
    "dataset_descriptions",
    "default_cache_dir",
    "epoch_indices",
    "get_dataset_spec",
    "list_datasets",
    "load_dataset",
    "make_loader",
    "register_dataset",
    "resolve_data_dir",
    "search_roots",
]
