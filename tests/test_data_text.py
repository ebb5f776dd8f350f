"""The ``text`` dataset: a local UTF-8 file as character-level language modelling."""

from __future__ import annotations

import pytest
import torch

from itop.data import TextDataset, load_dataset
from itop.data.files import CorruptDataError
from itop.data.text import encode_text
from itop.errors import ConfigError, DataNotFoundError

TEXT = "".join(f"line {i}: the sparse net explores — ünïcode ok\n" for i in range(60))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_vocabulary_and_ids():
    ids, vocab = encode_text("bca\u00e9b")
    assert vocab == ("a", "b", "c", "\u00e9")
    assert ids.tolist() == [1, 2, 0, 3, 1]


def test_windows_targets_and_stream_split(text_file):
    splits = load_dataset("text", data_file=str(text_file), block_size=16, val_fraction=0.0)
    vocab = splits.classes
    assert vocab == tuple(sorted(set(TEXT)))
    assert splits.model_shape() == {"num_classes": len(vocab), "vocab_size": len(vocab), "block_size": 16}
    train, test = splits.train, splits.test
    assert isinstance(train, TextDataset)
    cut = round(0.9 * len(TEXT))
    assert len(train) == (cut - 17) // 16 + 1 and len(test) == (len(TEXT) - cut - 17) // 16 + 1
    x, y = train.get_batch(torch.arange(len(train)))
    assert x.shape == y.shape == (len(train), 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next characters
    assert train.decode(x[0]) == TEXT[:16] and train.decode(y[0]) == TEXT[1:17]
    assert train.decode(x[3]) == TEXT[48:64]  # non-overlapping windows every block_size
    assert test.decode(test[0][0]) == TEXT[cut:cut + 16]  # the test text follows the training text


def test_validation_windows_are_whole_training_windows(text_file):
    splits = load_dataset("text", data_file=str(text_file), block_size=8, val_fraction=0.2)
    full = load_dataset("text", data_file=str(text_file), block_size=8, val_fraction=0.0).train
    train_starts, val_starts = set(splits.train.starts.tolist()), set(splits.val.starts.tolist())
    assert not train_starts & val_starts
    assert train_starts | val_starts == set(full.starts.tolist())
    assert len(splits.val) == round(0.2 * len(full))


def test_loader_is_deterministic_and_resumable(text_file):
    splits = load_dataset("text", data_file=str(text_file), block_size=8)
    a, b = splits.loader("train", batch_size=5, seed=3), splits.loader("train", batch_size=5, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    batches = list(a)
    resumed = list(b.iter_from(2))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(batches[2:], resumed, strict=True))


def test_stride_option(text_file):
    dense = load_dataset("text", data_file=str(text_file), block_size=8, stride=2, val_fraction=0.0)
    assert dense.train.starts[:4].tolist() == [0, 2, 4, 6]


def test_bad_input(tmp_path, text_file):
    with pytest.raises(ConfigError, match="needs its file: pass --data-file"):
        load_dataset("text")
    with pytest.raises(DataNotFoundError, match="text file .*missing.txt not found; pass --data-file"):
        load_dataset("text", data_file=str(tmp_path / "missing.txt"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    with pytest.raises(CorruptDataError, match="not valid utf-8 at byte 3"):
        load_dataset("text", data_file=str(bad))
    assert load_dataset("text", data_file=str(bad), encoding="latin-1", block_size=8).vocab_size == 5
    short = tmp_path / "short.txt"
    short.write_text("tiny text", encoding="utf-8")
    with pytest.raises(ConfigError, match="has 9 characters: too few for windows of block_size 128"):
        load_dataset("text", data_file=str(short))
    with pytest.raises(ConfigError, match="test_fraction must be a number in"):
        load_dataset("text", data_file=str(text_file), test_fraction=1.5)
    with pytest.raises(ConfigError, match="block_size must be an integer"):
        load_dataset("text", data_file=str(text_file), block_size=0)
    with pytest.raises(ConfigError, match="unknown option"):
        load_dataset("text", data_file=str(text_file), blocksize=8)
