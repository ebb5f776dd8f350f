"""A local UTF-8 text file as a character-level language-modelling dataset: ``text``.

The whole file is read and decoded as UTF-8 (``encoding`` option); its vocabulary is the sorted
set of distinct characters, so token ids are stable for a given file. The character stream is
split in order: the first ``1 - test_fraction`` of it is the training text, the rest the test
text, so the test set never shares a sentence with training. Each split is cut into windows
of ``block_size + 1`` characters every ``stride`` characters (default: ``block_size``, so
windows do not overlap): item ``i`` is ``x = text[s_i : s_i + T]`` and the next-character
targets ``y = text[s_i + 1 : s_i + T + 1]``, both ``(T,)`` int64. The validation split that
:func:`~itop.data.load_dataset` carves out (``val_fraction``) is a fixed set of whole training
windows.

Use it with a language model such as ``gpt-mini``::

    splits = load_dataset("text", data_file="input.txt", block_size=128)
    model = build_model("gpt-mini", **splits.model_shape())
    x, y = next(iter(splits.loader("train", batch_size=32)))       # (32, 128) each
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from itop.data.files import corrupt, one_line
from itop.data.registry import register_dataset
from itop.data.splits import DatasetSplits
from itop.errors import ConfigError, DataNotFoundError

__all__ = ["TextDataset", "encode_text", "load_text"]


def encode_text(text: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Character ids of ``text`` and its vocabulary (distinct characters, sorted by code point).

    Returns:
        ``(ids, vocab)``: an int64 tensor with ``vocab[ids[i]] == text[i]``.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    points, ids = np.unique(codes, return_inverse=True)
    vocab = tuple(chr(int(c)) for c in points)
    return torch.from_numpy(ids.astype(np.int64).reshape(-1)), vocab


def load_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a text file; a missing or undecodable file is a one-line error naming the fix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"text file {path} not found; pass --data-file (data_file=) the path of a UTF-8 text file"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise corrupt(path, exc.strerror or exc) from None
    try:
        return raw.decode(encoding)
    except LookupError:
        raise ConfigError(f"unknown text encoding '{encoding}'; use e.g. utf-8 or latin-1") from None
    except UnicodeDecodeError as exc:
        raise corrupt(
            path, f"not valid {encoding} at byte {exc.start} ({one_line(exc.reason)}); convert it "
            "to UTF-8 or pass the file's encoding"
        ) from None


class TextDataset(Dataset):
    """Windows of a token stream: item ``i`` is ``(tokens[s_i : s_i+T], tokens[s_i+1 : s_i+T+1])``.

    Batched by index like the in-memory image datasets (``get_batch``), so the deterministic,
    resumable :class:`~itop.data.BatchLoader` serves it.

    Args:
        tokens: ``(L,)`` integer token stream (shared, never copied by :meth:`subset`).
        block_size: Context length ``T``.
        vocab: The characters of the token ids.
        starts: Window start positions; default every ``stride`` tokens.
        stride: Distance between window starts (default ``block_size``).
    """

    augment = None  # text is not augmented

    def __init__(
        self,
        tokens: torch.Tensor,
        block_size: int,
        vocab: Sequence[str],
        starts: torch.Tensor | None = None,
        stride: int | None = None,
    ) -> None:
        if tokens.dim() != 1:
            raise ConfigError(f"tokens must be a 1-D stream, got shape {tuple(tokens.shape)}")
        self.tokens = tokens
        self.block_size = int(block_size)
        self.vocab = tuple(vocab)
        if starts is None:
            step = self.block_size if stride is None else int(stride)
            last = tokens.numel() - self.block_size - 1  # the last window needs T + 1 tokens
            starts = torch.arange(0, last + 1, step) if last >= 0 else torch.zeros(0, dtype=torch.int64)
        self.starts = starts.to(torch.int64)
        self._offsets = torch.arange(self.block_size + 1)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def num_classes(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return int(self.starts.numel())

    def __repr__(self) -> str:
        return (f"TextDataset(n={len(self)}, block_size={self.block_size}, "
                f"vocab_size={self.vocab_size}, tokens={self.tokens.numel()})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for dataset of size {n}")
        x, y = self.get_batch(torch.tensor([index % n]))
        return x[0], y[0]

    def get_batch(
        self, index: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets ``(B, T)`` int64 of the windows at ``index``."""
        index = torch.as_tensor(index, dtype=torch.int64)
        rows = self.tokens[self.starts[index].unsqueeze(1) + self._offsets].to(torch.int64)
        return rows[:, :-1], rows[:, 1:]

    def subset(self, indices: torch.Tensor | Sequence[int], *, augment: bool = False) -> TextDataset:
        """The windows at ``indices`` (the token stream is shared)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return TextDataset(self.tokens, self.block_size, self.vocab, starts=self.starts[index])

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text``; a character outside the vocabulary is an error."""
        lookup = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted({c for c in text if c not in lookup})
        if unknown:
            raise ConfigError(f"characters {unknown[:5]!r} are not in the vocabulary of this text")
        return torch.tensor([lookup[c] for c in text], dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text of token ids."""
        return "".join(self.vocab[int(i)] for i in torch.as_tensor(ids).reshape(-1))


def _check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _build_text(
    folder: None = None,
    data_file: str | Path | None = None,
    block_size: int = 128,
    test_fraction: float = 0.1,
    stride: int | None = None,
    encoding: str = "utf-8",
) -> DatasetSplits:
    if data_file is None or str(data_file) == "":
        raise ConfigError(
            "dataset 'text' needs its file: pass --data-file PATH (data_file=PATH), a UTF-8 text file"
        )
    block_size = _check_positive_int(block_size, "block_size")
    if stride is not None:
        stride = _check_positive_int(stride, "stride")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
        0.0 < test_fraction < 1.0
    ):
        raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    path = Path(data_file).expanduser()
    tokens, vocab = encode_text(load_text(path, encoding))
    cut = int(round((1.0 - test_fraction) * tokens.numel()))
    train_tokens, test_tokens = tokens[:cut], tokens[cut:]
    need = block_size + 1
    if min(train_tokens.numel(), test_tokens.numel()) < need:
        least = math.ceil(need / min(test_fraction, 1.0 - test_fraction))
        raise ConfigError(
            f"{path} has {tokens.numel()} characters: too few for windows of block_size "
            f"{block_size} in both the train and test parts (test_fraction {test_fraction}); "
            f"use a text of at least {least} characters or a smaller block_size"
        )
    train = TextDataset(train_tokens, block_size, vocab, stride=stride)
    test = TextDataset(test_tokens, block_size, vocab, stride=stride)
    return DatasetSplits(
        name="text",
        train=train,
        val=None,
        test=test,
        num_classes=len(vocab),
        classes=vocab,
        vocab_size=len(vocab),
        block_size=block_size,
        task="language-model",
    )


register_dataset(
    "text",
    _build_text,
    description=(
        "a local UTF-8 text file (data_file option) as character-level language modelling: "
        "windows of block_size characters and their next characters; last 10% of the text is "
        "the test set"
    ),
)
