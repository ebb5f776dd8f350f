"""Tests for itop.data: registry, file formats, splits, deterministic loaders, errors.

All files are written in the real formats inside ``tmp_path``; nothing touches the network
(the fetch function is replaced where downloads are exercised).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import itop.data.download as download_mod
import itop.data.idx as idx_mod
import itop.data.registry as registry_mod
from itop.data import (
    BatchLoader,
    CorruptDataError,
    DatasetSplits,
    RandomCropFlip,
    TensorImageDataset,
    WorkerBatchLoader,
    dataset_descriptions,
    get_dataset_spec,
    list_datasets,
    load_dataset,
    make_loader,
    register_dataset,
    resolve_data_dir,
    search_roots,
)
from itop.data.transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from itop.errors import ConfigError, DataNotFoundError

REAL_FASHION = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "fashion-mnist"
IDX_NAMES = idx_mod.IDX_FILES


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test away from the real ~/.cache/itop and $ITOP_DATA."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ITOP_DATA", raising=False)
    return home


# -- writers for the real file formats ---------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(folder: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
    return arrays


def cifar_batch(n: int, rng, label_key: str = "labels", classes: int = 10, protocol: int = 2):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, n).tolist()
    batch = {b"batch_label": b"x", b"data": data, label_key.encode(): labels}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [c // 5 for c in labels]
    batch[b"filenames"] = [f"img{i}.png".encode() for i in range(n)]
    return pickle.dumps(batch, protocol=protocol), data, np.array(labels)


def write_cifar10(folder: Path, n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        raw, data, labels = cifar_batch(n, rng, protocol=[2, 3, 4, 5, 2, 4][k])
        (folder / name).write_bytes(raw)
        out[name] = (raw, data, labels)
    return out


def make_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def single_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def id_dataset(n: int, augment=None) -> TensorImageDataset:
    """Sample i is the 1x1 image with value i (normalised storage, identity statistics)."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return TensorImageDataset(
        images, torch.arange(n) % 10, mean=(0.0,), std=(1.0,), normalized=True, augment=augment
    )


def ids(loader) -> list[int]:
    return [int(v) for x, _ in loader for v in x.reshape(len(x), -1)[:, 0]]


# -- registry -----------------------------------------------------------------------------------
def test_registry_lists_builtins_with_descriptions():
    names = list_datasets()
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet"):
        assert name in names
    descriptions = dataset_descriptions()
    assert all(descriptions[n] and "\n" not in descriptions[n] for n in names)
    assert get_dataset_spec("FMNIST").name == "fashion-mnist"
    assert get_dataset_spec("cifar-10").name == "cifar10"


def test_unknown_dataset_suggests_nearest():
    with pytest.raises(ConfigError) as exc:
        load_dataset("mnsit")
    assert "did you mean 'mnist'" in single_line(exc)
    with pytest.raises(ConfigError):
        resolve_data_dir("no-such-dataset")


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", True, None])
def test_bad_val_fraction(bad):
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=bad)


def test_unknown_option_rejected():
    with pytest.raises(ConfigError, match="crop_size"):
        load_dataset("digits", crop_size=3)


def test_register_custom_dataset(monkeypatch):
    monkeypatch.setattr(registry_mod, "_REGISTRY", registry_mod._REGISTRY.copy())
    monkeypatch.setattr(registry_mod, "_ALIASES", dict(registry_mod._ALIASES))

    @register_dataset("toy", description="toy data")
    def build(folder):
        data = id_dataset(20)
        return DatasetSplits("toy", data, None, id_dataset(5), 10, 1, 1)

    assert "toy" in list_datasets()
    splits = load_dataset("toy", val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 5)
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset("toy", build, description="again")


# -- digits -------------------------------------------------------------------------------------
def test_digits_loads_with_fixed_splits():
    splits = load_dataset("digits")
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 8)
    sizes = splits.sizes()
    assert sum(sizes.values()) == 1797
    assert 350 <= sizes["test"] <= 370 and sizes["val"] == round(0.1 * (1797 - sizes["test"]))
    test_counts = torch.bincount(splits.test.labels, minlength=10)
    assert bool((test_counts >= 34).all()) and bool((test_counts <= 37).all())  # stratified
    x, y = next(iter(splits.loader("train", batch_size=32, seed=3)))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(splits.train.images.mean())) < 0.2  # normalised
    again = load_dataset("digits")
    assert torch.equal(again.test.labels, splits.test.labels)
    assert torch.equal(again.test.images, splits.test.images)
    assert torch.equal(again.val.source_indices, splits.val.source_indices)


# -- IDX (MNIST / Fashion-MNIST) ----------------------------------------------------------------
def test_mnist_idx_roundtrip_and_val_split(tmp_path):
    arrays = write_mnist(tmp_path / "mnist", n_train=40, n_test=12)
    splits = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.25, download=False)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    train_y = torch.from_numpy(arrays["train-labels-idx1-ubyte.gz"].astype(np.int64))
    train_x = torch.from_numpy(arrays["train-images-idx3-ubyte.gz"]).float() / 255
    for part in (splits.train, splits.val):
        src = part.source_indices
        assert torch.equal(part.labels, train_y[src])
        restored = part.images[:, 0] * 0.3081 + 0.1307
        assert torch.allclose(restored, train_x[src], atol=1e-5)
    # val is disjoint from train, together they are the whole official training set
    tr, va = set(splits.train.source_indices.tolist()), set(splits.val.source_indices.tolist())
    assert not tr & va and tr | va == set(range(40))
    # deterministic: the same images validate in every run
    again = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.25, download=False)
    assert torch.equal(again.val.source_indices, splits.val.source_indices)
    # the test loader is in file order, unaugmented
    xs, ys = zip(*splits.loader("test", batch_size=5), strict=True)
    assert torch.equal(torch.cat(ys), torch.from_numpy(arrays["t10k-labels-idx1-ubyte.gz"]).long())
    assert torch.cat(xs).shape == (12, 1, 28, 28)


def test_val_fraction_zero_gives_no_val(tmp_path):
    write_mnist(tmp_path, n_train=20)
    splits = load_dataset("mnist", data_dir=tmp_path, val_fraction=0, download=False)
    assert splits.val is None and len(splits.train) == 20
    with pytest.raises(ConfigError, match="val_fraction=0"):
        splits.loader("val")
    with pytest.raises(ConfigError, match="unknown split"):
        splits.loader("dev")


def test_data_dir_lookup_order(tmp_path, monkeypatch, _isolated_home):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", _isolated_home / ".cache/itop"
    write_mnist(explicit / "mnist")  # <root>/<name>/<files>
    write_mnist(env)  # <root>/<files>
    write_mnist(cache / "MNIST" / "raw")  # torchvision layout
    monkeypatch.setenv("ITOP_DATA", str(env))
    assert resolve_data_dir("mnist", explicit) == explicit / "mnist"
    assert resolve_data_dir("mnist") == env
    monkeypatch.delenv("ITOP_DATA")
    assert resolve_data_dir("mnist") == cache / "MNIST" / "raw"
    assert resolve_data_dir("digits") is None
    roots = search_roots("fashion-mnist", explicit)
    assert roots[0] == explicit and Path("/usr/share/datasets/fashion-mnist") in roots


def test_missing_files_offline_names_folders_and_files(tmp_path, _isolated_home):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("mnist", data_dir=empty, download=False)
    message = single_line(exc)
    assert message.startswith("mnist files not found in ")
    assert str(empty) in message and str(_isolated_home / ".cache" / "itop") in message
    for name in IDX_NAMES:
        assert name in message
    assert "--data-dir" in message
    debian = Path("/usr/share/datasets/fashion-mnist")
    if not (debian / IDX_NAMES[0]).exists():
        with pytest.raises(DataNotFoundError) as exc:
            load_dataset("fashion-mnist", data_dir=empty, download=False)
        assert str(debian) in single_line(exc)


def test_download_failure_is_data_not_found(tmp_path, monkeypatch, _isolated_home):
    calls = []

    def offline(url, dest, *, timeout):
        calls.append(url)
        Path(dest).write_bytes(b"partial")
        raise OSError("network is unreachable")

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    message = single_line(exc)
    assert "network is unreachable" in message and "download" in message
    assert IDX_NAMES[0] in message
    assert calls and all(url.startswith("http") for url in calls)
    target = _isolated_home / ".cache" / "itop" / "mnist"
    assert not target.exists() or not any(target.iterdir())  # no partial files left


def test_download_verifies_checksum_then_loads(tmp_path, monkeypatch, _isolated_home):
    source = tmp_path / "source"
    write_mnist(source, n_train=10, n_test=4)
    served = {name: (source / name).read_bytes() for name in IDX_NAMES}

    def fake_fetch(url, dest, *, timeout):
        Path(dest).write_bytes(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(download_mod, "fetch_url", fake_fetch)
    empty = tmp_path / "empty"
    # published checksums do not match the fake payload: rejected, nothing left behind
    with pytest.raises(DataNotFoundError, match="checksum mismatch"):
        load_dataset("mnist", data_dir=empty, download=True)
    cache = _isolated_home / ".cache" / "itop" / "mnist"
    assert not cache.exists() or not any(cache.iterdir())
    for name, payload in served.items():
        monkeypatch.setitem(idx_mod.MNIST_MD5, name, hashlib.md5(payload).hexdigest())
    splits = load_dataset("mnist", data_dir=empty, download=True, val_fraction=0)
    assert len(splits.train) == 10 and sorted(p.name for p in cache.iterdir()) == sorted(served)


def test_corrupt_gzip(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / IDX_NAMES[0]).write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert IDX_NAMES[0] in single_line(exc) and isinstance(exc.value, CorruptDataError)


def test_truncated_gzip_stream(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / IDX_NAMES[2]
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert IDX_NAMES[2] in single_line(exc)


def test_truncated_idx_payload(tmp_path):
    arrays = write_mnist(tmp_path)
    payload = idx_bytes(arrays[IDX_NAMES[0]])[:-100]
    (tmp_path / IDX_NAMES[0]).write_bytes(gzip.compress(payload))
    with pytest.raises(DataNotFoundError, match="truncated") as exc:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert IDX_NAMES[0] in single_line(exc)


def test_bad_idx_magic_and_count_mismatch(tmp_path):
    arrays = write_mnist(tmp_path)
    bad = bytearray(idx_bytes(arrays[IDX_NAMES[1]]))
    bad[2] = 0x42
    (tmp_path / IDX_NAMES[1]).write_bytes(gzip.compress(bytes(bad)))
    with pytest.raises(DataNotFoundError, match="magic"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    labels = arrays[IDX_NAMES[1]][:-1]
    (tmp_path / IDX_NAMES[1]).write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataNotFoundError, match="labels for"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.mark.skipif(
    not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not present in ../shared/datasets",
)
def test_real_fashion_mnist():
    splits = load_dataset("fashion-mnist", data_dir=REAL_FASHION, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert splits.classes[0] == "T-shirt/top" and splits.num_classes == 10
    assert splits.train.images.dtype == torch.float32
    loader = splits.loader("train", batch_size=128, seed=0)
    assert len(loader) == 422
    x, y = next(iter(loader))
    assert x.shape == (128, 1, 28, 28) and y.dtype == torch.int64
    counts = torch.bincount(splits.test.labels, minlength=10)
    assert bool((counts == 1000).all())
    assert abs(float(splits.test.images.mean())) < 0.05  # standard stats normalise it


# -- loaders ------------------------------------------------------------------------------------
def test_loader_covers_each_sample_once_per_epoch():
    loader = BatchLoader(id_dataset(23), batch_size=5, seed=7)
    assert len(loader) == 5
    seen = ids(loader)
    assert sorted(seen) == list(range(23))
    assert seen != list(range(23))  # shuffled
    assert ids(loader) == seen  # same epoch, same order
    assert ids(BatchLoader(id_dataset(23), batch_size=5, seed=7)) == seen
    loader.set_epoch(1)
    other = ids(loader)
    assert sorted(other) == list(range(23)) and other != seen
    assert ids(BatchLoader(id_dataset(23), batch_size=5, shuffle=False)) == list(range(23))


def test_iter_from_resumes_exactly():
    loader = BatchLoader(id_dataset(37), batch_size=4, seed=11)
    loader.set_epoch(3)
    full = [x.clone() for x, _ in loader]
    for k in (0, 1, 5, len(loader) - 1, len(loader)):
        fresh = BatchLoader(id_dataset(37), batch_size=4, seed=11)
        fresh.set_epoch(3)
        tail = [x for x, _ in fresh.iter_from(k)]
        assert len(tail) == len(full) - k
        assert all(torch.equal(a, b) for a, b in zip(tail, full[k:], strict=True))
    with pytest.raises(ConfigError):
        loader.iter_from(len(loader) + 1)
    with pytest.raises(ConfigError):
        loader.iter_from(-1)


def test_drop_last_and_argument_checks():
    assert len(BatchLoader(id_dataset(10), batch_size=3, drop_last=True)) == 3
    assert len(BatchLoader(id_dataset(10), batch_size=3)) == 4
    assert ids(BatchLoader(id_dataset(10), batch_size=3, shuffle=False, drop_last=True)) == list(
        range(9)
    )
    for kwargs in ({"batch_size": 0}, {"rank": 2, "world_size": 2}, {"world_size": 0}):
        with pytest.raises(ConfigError):
            BatchLoader(id_dataset(10), **{"batch_size": 2, **kwargs})
    with pytest.raises(ConfigError):
        BatchLoader(id_dataset(10)).set_epoch(-1)


@pytest.mark.parametrize("n", [12, 10])
def test_distributed_shards(n):
    world = 3
    loaders = [
        BatchLoader(id_dataset(n), batch_size=2, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    for loader in loaders:
        loader.set_epoch(2)
    shards = [ids(loader) for loader in loaders]
    assert len({len(loader) for loader in loaders}) == 1
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-n // world)
    union = [i for s in shards for i in s]
    assert set(union) == set(range(n))
    if n % world == 0:
        assert len(union) == len(set(union))  # disjoint
    # the shards interleave one shared permutation (the same on every rank)
    order = torch.stack([loader.indices() for loader in loaders], dim=1).reshape(-1)[:n]
    assert sorted(order.tolist()) == list(range(n))


def _valid_crop_flip(out: torch.Tensor, src: torch.Tensor, pad: int) -> bool:
    c, h, w = src.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=src.dtype)
    padded[:, pad : pad + h, pad : pad + w] = src
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(crop, out) or torch.equal(crop.flip(-1), out):
                return True
    return False


def test_crop_flip_augmentation_is_batched_valid_and_reproducible():
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 3, 8, 8), generator=rng, dtype=torch.uint8)
    data = TensorImageDataset(
        images,
        torch.arange(16) % 10,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        scale=1.0,
        augment=RandomCropFlip(padding=2),
    )

    def run(epoch, start=0):
        loader = BatchLoader(data, batch_size=8, seed=1)
        loader.set_epoch(epoch)
        return [(x, loader.batch_indices()[k]) for k, (x, _) in enumerate(loader)][start:], [
            x for x, _ in loader.iter_from(start)
        ]

    batches, _ = run(0)
    moved = 0
    for x, index in batches:
        assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32
        for out, i in zip(x, index, strict=True):
            src = images[i].float()
            assert _valid_crop_flip(out, src, 2)
            moved += not torch.equal(out, src)
    assert moved >= 8  # crop/flip really moves pixels
    again, tail = run(0, start=1)
    assert torch.equal(again[0][0], batches[1][0]) and torch.equal(tail[0], batches[1][0])
    other, _ = run(1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(other, batches, strict=True))
    # eval loaders (augment=False) return the untouched images
    plain = BatchLoader(data, batch_size=16, shuffle=False, augment=False)
    assert torch.equal(next(iter(plain))[0], images.float())


def test_crop_flip_fill_on_normalised_storage():
    aug = RandomCropFlip(padding=3, flip=False)
    batch = torch.ones(4, 2, 5, 5)
    gen = torch.Generator().manual_seed(3)
    out = aug(batch, gen, fill=torch.tensor([-1.0, -2.0]))
    assert out.shape == batch.shape
    assert set(out[:, 0].unique().tolist()) <= {1.0, -1.0}
    assert set(out[:, 1].unique().tolist()) <= {1.0, -2.0}


def test_worker_loader_for_plain_map_dataset():
    class Squares(Dataset):
        def __len__(self):
            return 9

        def __getitem__(self, i):
            return torch.tensor([float(i * i)]), i

    loader = make_loader(Squares(), batch_size=4, seed=2)
    assert isinstance(loader, WorkerBatchLoader) and len(loader) == 3
    batches = list(loader)
    assert sorted(int(y) for _, ys in batches for y in ys) == list(range(9))
    assert all(torch.equal(x[:, 0], (ys * ys).float()) for x, ys in batches)
    tail = list(loader.iter_from(1))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(tail, batches[1:], strict=True))


# -- CIFAR --------------------------------------------------------------------------------------
def test_cifar10_from_folder(tmp_path):
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.25, download=False)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 4)
    assert splits.train.images.dtype == torch.uint8  # normalised per batch
    _, data, labels = written["test_batch"]
    x, y = next(iter(splits.loader("test", batch_size=4)))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32)
    assert torch.equal(y, torch.from_numpy(labels))
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    raw = torch.from_numpy(data).view(4, 3, 32, 32).float() / 255
    assert torch.allclose(x * std + mean, raw, atol=1e-5)
    all_labels = np.concatenate([written[f"data_batch_{i}"][2] for i in range(1, 6)])
    src = splits.train.source_indices
    assert torch.equal(splits.train.labels, torch.from_numpy(all_labels)[src])
    # training batches are augmented (crop + flip), deterministically
    loader = splits.loader("train", batch_size=15, seed=0)
    (xa, ya), (xb, yb) = next(iter(loader)), next(iter(loader))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    plain = splits.train.get_batch(loader.indices())[0]
    assert not torch.equal(xa, plain)


def test_cifar10_from_tar_gz_matches_folder(tmp_path):
    written = write_cifar10(tmp_path / "folder" / "cifar-10-batches-py", seed=4)
    members = {f"cifar-10-batches-py/{name}": raw for name, (raw, _, _) in written.items()}
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    make_tar_gz(tmp_path / "tar" / "cifar10" / "cifar-10-python.tar.gz", members)
    from_tar = load_dataset("cifar10", data_dir=tmp_path / "tar", download=False)
    from_dir = load_dataset("cifar10", data_dir=tmp_path / "folder", download=False)
    for split in ("train", "val", "test"):
        a, b = getattr(from_tar, split), getattr(from_dir, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not (tmp_path / "tar" / "cifar10" / "cifar-10-batches-py").exists()  # not extracted


def test_cifar10_broken_archive(tmp_path):
    written = write_cifar10(tmp_path / "src")
    members = {f"cifar-10-batches-py/{n}": raw for n, (raw, _, _) in written.items()}
    del members["cifar-10-batches-py/data_batch_3"]
    archive = tmp_path / "a" / "cifar-10-python.tar.gz"
    make_tar_gz(archive, members)
    with pytest.raises(DataNotFoundError, match="data_batch_3") as exc:
        load_dataset("cifar10", data_dir=tmp_path / "a", download=False)
    assert str(archive) in single_line(exc)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("cifar10", data_dir=tmp_path / "a", download=False)
    assert "cifar-10-python.tar.gz" in single_line(exc)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    raw_train, _, train_labels = cifar_batch(10, rng, "fine_labels", 100)
    raw_test, _, test_labels = cifar_batch(6, rng, "fine_labels", 100, protocol=5)
    (folder / "train").write_bytes(raw_train)
    (folder / "test").write_bytes(raw_test)
    splits = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0, download=False)
    assert splits.num_classes == 100 and len(splits.train) == 10
    assert torch.equal(splits.test.labels, torch.from_numpy(test_labels))
    assert torch.equal(splits.train.labels, torch.from_numpy(train_labels))


def test_cifar_python2_style_numpy_core_pickle(tmp_path):
    written = write_cifar10(tmp_path)
    raw = written["data_batch_1"][0]
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert legacy != raw
    (tmp_path / "data_batch_1").write_bytes(legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0, download=False)
    assert torch.equal(
        splits.train.images[:4].reshape(4, -1), torch.from_numpy(written["data_batch_1"][1])
    )


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_with_forbidden_global_is_rejected(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(
        DataNotFoundError, match=r"forbidden global (__builtin__|builtins)\.exec"
    ) as exc:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert "data_batch_2" in single_line(exc)
    assert not marker.exists()


def test_corrupt_and_malformed_cifar_pickles(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataNotFoundError, match="test_batch") as exc:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    single_line(exc)
    bad_shape = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad_shape))
    with pytest.raises(DataNotFoundError, match="3072"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_missing_names_archive_and_batches(tmp_path):
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    message = single_line(exc)
    for name in ("cifar-10-python.tar.gz", "cifar-10-batches-py", "data_batch_5", "test_batch"):
        assert name in message


# -- ImageNet-style folders ---------------------------------------------------------------------
CLASS_RED = {"apple": 40, "banana": 130, "cherry": 220}


def write_image_tree(root: Path) -> None:
    from PIL import Image

    sizes = [(24, 20), (18, 30), (40, 26), (22, 22)]
    for split, count in (("train", 4), ("val", 2)):
        for cls, red in CLASS_RED.items():
            folder = root / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i]
                if i % 2 == 0:  # PNG: constant red/green, horizontal gradient in blue
                    arr = np.zeros((h, w, 3), dtype=np.uint8)
                    arr[..., 0], arr[..., 1] = red, 90
                    arr[..., 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
                    Image.fromarray(arr).save(folder / f"img{i}.png")
                else:  # JPEG: solid colour
                    Image.new("RGB", (w, h), (red, 90, 60)).save(folder / f"img{i}.JPEG")
            (folder / "notes.txt").write_text("not an image")


def _red_channel(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255


def test_imagenet_folder_tree(tmp_path):
    write_image_tree(tmp_path)
    splits = load_dataset(
        "imagenet", data_dir=tmp_path, val_fraction=0, crop_size=16, resize_size=20
    )
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (3, 3, 16)
    assert (len(splits.train), len(splits.test)) == (12, 6)
    assert splits.classes == ("apple", "banana", "cherry")
    reds = torch.tensor(list(CLASS_RED.values()), dtype=torch.float32)
    for split in ("train", "test"):
        loader = splits.loader(split, batch_size=5, seed=0)
        batches = list(loader)
        assert len(batches) == len(loader)
        for x, y in batches:
            assert (
                x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16) and y.dtype == torch.int64
            )
            # labels pair with the right images (red channel encodes the class)
            assert torch.allclose(_red_channel(x).mean(dim=(1, 2)), reds[y], atol=4)


def test_imagenet_loader_deterministic_resume_workers_and_shards(tmp_path):
    write_image_tree(tmp_path)
    splits = load_dataset(
        "imagenet", data_dir=tmp_path, val_fraction=0.25, crop_size=12, resize_size=14
    )
    assert (len(splits.train), len(splits.val)) == (9, 3)
    assert splits.val.augment is None and splits.train.augment is not None

    def batches(epoch, start=0, **kw):
        loader = splits.loader("train", batch_size=4, seed=9, **kw)
        loader.set_epoch(epoch)
        return [x for x, _ in loader.iter_from(start)]

    first = batches(0)
    assert all(torch.equal(a, b) for a, b in zip(batches(0, 1), first[1:], strict=True))
    with_workers = batches(0, num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(with_workers, first, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches(1), first, strict=True))
    # eval transform is deterministic and differs from the augmented view
    ev = [x for x, _ in splits.loader("val", batch_size=3)]
    assert torch.equal(ev[0], next(iter(splits.loader("val", batch_size=3)))[0])
    assert torch.allclose(ev[0][0], splits.val[0][0])
    shard_lens = {
        len(list(splits.loader("train", batch_size=2, rank=r, world_size=2))) for r in range(2)
    }
    assert shard_lens == {3}


def test_imagenet_errors(tmp_path):
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("imagenet", data_dir=tmp_path)
    assert "train/<class>" in single_line(exc)
    write_image_tree(tmp_path)
    with pytest.raises(ConfigError, match="crop_size"):
        load_dataset("imagenet", data_dir=tmp_path, crop_size=32, resize_size=20)
    bad = tmp_path / "imagenet" / "val" / "apple" / "img9.png"
    bad.write_bytes(b"not a png")
    splits = load_dataset("imagenet", data_dir=tmp_path, crop_size=8, resize_size=8)
    with pytest.raises(DataNotFoundError, match="img9.png"):
        list(splits.loader("test", batch_size=8))
