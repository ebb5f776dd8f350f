"""The dataset registry, the data-folder search and :func:`load_dataset`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itop.data import download as _download
from itop.data.files import default_cache_dir, env_roots, one_line
from itop.data.splits import DatasetSplits, check_val_fraction, split_validation
from itop.errors import ConfigError, DataNotFoundError, unknown_name
from itop.registry import Registry

Locator = Callable[[Path], Path | None]


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry.

    Attributes:
        name: Canonical name.
        builder: ``builder(folder, **options) -> DatasetSplits`` returning the full training
            set as ``train`` (``val=None``); ``folder`` is what ``locate`` found (``None`` for
            datasets that need no files).
        description: One line for ``itop list``.
        locate: Given a search root, the folder holding the files, or ``None``. ``None`` for
            datasets that need no files.
        files_hint: What to put in a data folder (used in the not-found message).
        download: ``download(target_folder)`` fetching the files (raises ``DownloadError``),
            or ``None`` when the dataset cannot be downloaded.
        extra_roots: Search roots tried after the generic ones.
        aliases: Other accepted spellings.
    """

    name: str
    builder: Callable[..., DatasetSplits]
    description: str
    locate: Locator | None = None
    files_hint: str = ""
    download: Callable[[Path], Any] | None = None
    extra_roots: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


_REGISTRY: Registry[DatasetSpec] = Registry("dataset")
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return str(name).strip().lower()


def register_dataset(
    name: str,
    builder: Callable[..., DatasetSplits] | None = None,
    *,
    description: str,
    locate: Locator | None = None,
    files_hint: str = "",
    download: Callable[[Path], Any] | None = None,
    extra_roots: Sequence[str] = (),
    aliases: Sequence[str] = (),
    replace: bool = False,
):
    """Register a dataset (usable as a decorator when ``builder`` is omitted).

    A name already taken (or an alias of another dataset) is refused unless ``replace``.

    Returns:
        The builder (so the decorator form leaves the function unchanged).
    """

    def add(fn: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        key = _key(name)
        if key in _ALIASES and not replace:
            raise ConfigError(f"dataset '{name}' is already registered (as an alias of '{_ALIASES[key]}')")
        spec = DatasetSpec(
            name=key,
            builder=fn,
            description=one_line(description),
            locate=locate,
            files_hint=files_hint,
            download=download,
            extra_roots=tuple(extra_roots),
            aliases=tuple(_key(a) for a in aliases),
        )
        _REGISTRY.register(key, spec, replace=replace)
        for alias in spec.aliases:
            _ALIASES[alias] = key
        return fn

    if builder is None:
        return add
    return add(builder)


def list_datasets() -> list[str]:
    """Canonical names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def dataset_descriptions() -> dict[str, str]:
    """``{name: one-line description}`` for every registered dataset (for ``itop list``)."""
    return {name: _REGISTRY[name].description for name in list_datasets()}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (aliases accepted); unknown names raise ConfigError."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise unknown_name("dataset", name, list_datasets())
    return _REGISTRY[key]


def search_roots(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for ``name``'s files, in order.

    ``data_dir`` (if given), each folder of ``$ITOP_DATA``, ``~/.cache/itop``, then the
    dataset's extra roots (e.g. Debian's ``/usr/share/datasets/fashion-mnist``).
    """
    spec = get_dataset_spec(name)
    roots: list[Path] = []
    if data_dir is not None and str(data_dir) != "":
        roots.append(Path(data_dir).expanduser())
    roots.extend(env_roots())
    roots.append(default_cache_dir())
    roots.extend(Path(p) for p in spec.extra_roots)
    unique: list[Path] = []
    seen: set[str] = set()
    for root in roots:
        ident = str(root.absolute())
        if ident not in seen:
            seen.add(ident)
            unique.append(root)
    return unique


def _not_found(spec: DatasetSpec, roots: Sequence[Path], extra: str = "") -> DataNotFoundError:
    where = ", ".join(str(r) for r in roots)
    return DataNotFoundError(
        f"{spec.name} files not found in {where}{extra}; put {spec.files_hint} "
        "in one of them or pass --data-dir"
    )


def resolve_data_dir(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The folder holding ``name``'s files.

    Each root of :func:`search_roots` is tried in order; within a root both
    ``<root>/<name>/<files>`` and ``<root>/<files>`` are accepted (and the canonical archive
    folder names for CIFAR). Returns ``None`` for datasets that need no files (``digits``).

    Raises:
        DataNotFoundError: no root holds the files (one line naming the roots and the files).
    """
    spec = get_dataset_spec(name)
    if spec.locate is None:
        return None
    roots = search_roots(spec.name, data_dir)
    for root in roots:
        found = spec.locate(root)
        if found is not None:
            return found
    raise _not_found(spec, roots)


def check_dataset_options(name: str, options: dict[str, Any]) -> None:
    """Raise ConfigError now if ``load_dataset(name, **options)`` would reject an option."""
    _check_options(get_dataset_spec(name), options)


def _check_options(spec: DatasetSpec, options: dict[str, Any]) -> None:
    params = list(inspect.signature(spec.builder).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params]
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(known) if known else "none"
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for dataset '{spec.name}'; valid: {valid}"
        )


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    download: bool = True,
    *,
    augment: bool = True,
    **options: Any,
) -> DatasetSplits:
    """Load a registered dataset as train / val / test splits.

    Args:
        name: Registry name (see :func:`list_datasets`).
        data_dir: Folder to search first (see :func:`resolve_data_dir` for the full order).
        val_fraction: Fraction of the training set held out for validation, chosen with a
            fixed seed (identical in every run); ``0`` for no validation set.
        download: Download missing files into ``~/.cache/itop/<name>/`` if the dataset
            supports it.
        augment: Whether training loaders apply the dataset's augmentation.
        **options: Dataset-specific options (e.g. ``crop_size`` / ``resize_size`` for
            ImageNet).

    Raises:
        ConfigError: unknown name or option, ``val_fraction`` outside ``[0, 1)``.
        DataNotFoundError: files missing (and not downloadable), corrupt or truncated.
    """
    spec = get_dataset_spec(name)
    fraction = check_val_fraction(val_fraction)
    _check_options(spec, options)
    folder: Path | None = None
    if spec.locate is not None:
        try:
            folder = resolve_data_dir(spec.name, data_dir)
        except DataNotFoundError:
            if not (download and spec.download is not None):
                raise
            target = default_cache_dir() / spec.name
            try:
                spec.download(target)
            except _download.DownloadError as exc:
                reason = f" (download into {target} failed: {one_line(exc)})"
                raise _not_found(spec, search_roots(spec.name, data_dir), reason) from None
            folder = resolve_data_dir(spec.name, data_dir)
    splits = spec.builder(folder, **options)
    if not augment and hasattr(splits.train, "without_augmentation"):
        splits.train = splits.train.without_augmentation()
    return split_validation(splits, fraction)
